"""The model runner: input preparation, KV cache allocation, forward pass and sampling."""
