"""A synthetic word-level tokenizer for models without tokenizer files (random weights).

Token i is the word "t<i>" and decoding joins words with spaces, so a streamed text delta holds
one word per token (B4's serving benchmark counts them) and the frontend and HTTP server
detokenize without any files. `has_tokenizer_files(path)` says whether a model directory
brings its own tokenizer.
Imports text.tokenizer; tokenizers, transformers.
"""
from __future__ import annotations

import os

from cormorant.text.tokenizer import Tokenizer

# Any of these in a model directory means it has a tokenizer of its own.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                   "vocab.txt")


def has_tokenizer_files(path: str) -> bool:
    """A GGUF file always carries its tokenizer; a directory needs one of TOKENIZER_FILES."""
    if os.path.isfile(path):
        return True
    return any(os.path.isfile(os.path.join(path, name)) for name in TOKENIZER_FILES)


def synthetic_tokenizer(vocab_size: int, eos_token_ids: tuple[int, ...] = ()) -> Tokenizer:
    """Token i <-> the word "t<i>"; unknown words map to 0."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    rust = RustTokenizer(models.WordLevel(vocab, unk_token="t0"))
    rust.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=rust)
    return Tokenizer(fast, eos_token_ids=eos_token_ids, name="synthetic")
