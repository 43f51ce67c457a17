"""Per-key quotas (rpm, tpm, concurrency) and the counter stores behind them (in-process, Redis)."""
