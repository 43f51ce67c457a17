"""Authentication and authorization: API keys, their stores, the route table, the middleware, `cormorant keys`."""
