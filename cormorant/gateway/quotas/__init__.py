"""Per-key quotas (rpm, tpm, concurrency) and their counter stores (in process, Redis)."""
