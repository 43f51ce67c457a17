"""Model management: the registry, the pool of loaded models, the loader and the served models.

The layer between the server and the gateway: it may import the gateway (telemetry), frontend
(lazily, in loader.py) and below, never the server.
"""
