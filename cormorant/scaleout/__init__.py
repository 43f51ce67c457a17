"""Scale-out on Ray Serve: engine replicas, an engine-aware router, and the ingress's client.

The top layer (it imports the server's app factory): `cormorant serve --ray` and
`serve run cormorant.scaleout.app:build_app` put N engine replicas (replica.EngineReplica)
behind one cormorant HTTP surface whose engine is a RayEngineClient (client.py). Ray is
imported only here (the `ray` extra).
"""
