"""HTTP only: the OpenAI-compatible API in front of an engine object.

`build_app(engine, config)` (server.app) is the factory; `ServerConfig` (server.config) holds
every limit; `add_serve_args` / `run_server` (server.launch) are the `cormorant serve` command.
Modules here import fastapi/starlette/uvicorn, server.*, hosting (models), gateway
(policies), frontend outputs, config and sampling_params; never the engine implementation,
engine internals, runner or torch. Routes are one thin module per endpoint (route_*.py); the
work behind the generation routes is in serving_*.py; errors are mapped in errors.py;
middleware order is in app.py.
"""
