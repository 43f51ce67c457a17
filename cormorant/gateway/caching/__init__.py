"""Response caches: exact (deterministic requests) and semantic (close prompt embeddings)."""
