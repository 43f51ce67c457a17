"""Text handling above the engine: tokenizers, chat templates, detokenization, stop strings.

Tokenizer loading (HF directories, GGUF), chat templates, incremental detokenization, stop
strings and input normalization.
Modules: tokenizer (Tokenizer, load_tokenizer), gguf_metadata / gguf_tokenizer (GGUF header ->
tokenizer, no tensors), detokenizer (IncrementalDetokenizer), stop (StopStringMatcher),
normalize (normalize_text), synthetic (a word-level tokenizer for models without
tokenizer files). text/ may import config, sampling_params and third-party libraries,
never torch or engine code. Names are re-exported lazily so that `import cormorant.text.stop`
does not pay for importing transformers.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "ChatTemplateError": "tokenizer",
    "TokenizerLoadError": "tokenizer",
    "IncrementalDetokenizer": "detokenizer",
    "StopStringMatcher": "stop",
    "StopMatch": "stop",
    "normalize_text": "normalize",
    "normalize_messages": "normalize",
    "normalizer_from_config": "normalize",
    "synthetic_tokenizer": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
