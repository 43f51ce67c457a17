"""Authentication and authorization: API keys, key stores, route table, middleware, CLI."""
