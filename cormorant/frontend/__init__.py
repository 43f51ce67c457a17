"""The asyncio and offline side of the engine: output processing, the LLM API, the async client."""
