"""Model building blocks: linear, attention backends, norms, rotary embeddings, activations."""
