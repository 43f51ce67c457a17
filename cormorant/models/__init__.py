"""Causal LM architectures, their registry and the checkpoint loaders (safetensors, GGUF).

Entry points: `load_model`, `load_model_config` (models.loader) and `build_model`
(models.registry). Imports: torch, config, cormorant.layers.
"""
