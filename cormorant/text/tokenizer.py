"""The Tokenizer wrapper and `load_tokenizer` for Hugging Face directories and GGUF files.

`Tokenizer` is the one text <-> ids object the frontend uses: encode, decode, chat templates,
special ids. It wraps a transformers tokenizer (for chat templating and anything exotic) and
calls its Rust `tokenizers` backend directly on the hot paths (encode/decode), which also keeps
decode free of transformers' `clean_up_tokenization_spaces`, a legacy rewrite that would make
streamed text differ from the full decode.

Imports: transformers, tokenizers and text.* only; never torch or engine code. (transformers'
own GGUF path imports torch, so it is only the fallback for tokenizer types we do not build.)
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

from cormorant.text.gguf_metadata import read_gguf_metadata
from cormorant.text.gguf_tokenizer import build_gguf_tokenizer

# Only these string arrays are decoded from a GGUF header; the rest are skipped unread.
_GGUF_STRING_ARRAYS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.merges"})
# llama.cpp ends generation on any of these ("end of generation" tokens).
_GGUF_EOG_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                  "tokenizer.ggml.eom_token_id")


class TokenizerLoadError(ValueError):
    """The path holds no tokenizer we can load."""


class ChatTemplateError(ValueError):
    """No chat template, or the template rejected the conversation (a client error)."""


class Tokenizer:
    """A typed, thin wrapper over a Hugging Face tokenizer. Immutable after construction."""

    def __init__(self, hf_tokenizer: Any, *, eos_token_ids: Iterable[int] = (),
                 chat_template: str | None = None, name: str = "") -> None:
        self.hf = hf_tokenizer
        self.name = name
        # The Rust backend, when there is one: encode/decode through it skip Python overhead.
        self._backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if self._backend is not None:
            # A tokenizer.json may carry padding/truncation (MiniLM pads to 128): a prompt is
            # never silently padded or cut here; length limits are checked at the edge.
            self._backend.no_padding()
            self._backend.no_truncation()
        self.chat_template = chat_template or getattr(hf_tokenizer, "chat_template", None)
        ids = [hf_tokenizer.eos_token_id] if hf_tokenizer.eos_token_id is not None else []
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys([*ids, *eos_token_ids]))
        self.bos_token_id: int | None = hf_tokenizer.bos_token_id
        self.pad_token_id: int | None = hf_tokenizer.pad_token_id
        self.vocab_size: int = len(hf_tokenizer)  # includes added tokens
        self.all_special_ids: frozenset[int] = frozenset(hf_tokenizer.all_special_ids)

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The UTF-8 length of the longest vocabulary entry (added tokens included). In every
        vocabulary form we load (byte-level symbols, SentencePiece pieces with '▁', byte
        fallback '<0x..>') an entry's UTF-8 form is at least as long as the input bytes it
        stands for, so a text of B bytes has at least B / max_token_bytes tokens (before
        normalisation; see server.prompts for the slack)."""
        vocab = self.hf.get_vocab()
        return max((len(token.encode("utf-8", "surrogatepass")) for token in vocab), default=1)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=add_special_tokens).ids
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self._backend is not None:
            return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens,
                              clean_up_tokenization_spaces=False)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        if self._backend is not None:
            id_to_token = self._backend.id_to_token
            return [id_to_token(i) or "" for i in ids]
        return list(self.hf.convert_ids_to_tokens(list(ids)))

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, *,
                    tools: list[dict] | None = None, continue_final_message: bool = False,
                    **template_kwargs: Any) -> str:
        """The conversation as prompt text, via the model's Jinja chat template."""
        if not self.chat_template:
            raise ChatTemplateError(
                f"model {self.name!r} has no chat template; use the completions API or "
                "supply a template")
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError(
                "continue_final_message and add_generation_prompt cannot both be set")
        from jinja2 import TemplateError  # transformers renders with jinja2

        try:
            return self.hf.apply_chat_template(
                messages, tools=tools, chat_template=self.chat_template, tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, **template_kwargs)
        except TemplateError as exc:  # e.g. the template's raise_exception("roles must ...")
            raise ChatTemplateError(f"chat template error: {exc}") from exc

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            **kwargs: Any) -> list[int]:
        """Rendered conversation as ids. The template writes its own BOS/special tokens, so
        encoding adds none (as transformers does)."""
        text = self.render_chat(messages, add_generation_prompt, **kwargs)
        return self.encode(text, add_special_tokens=False)


def load_tokenizer(path: str, *, chat_template: str | None = None) -> Tokenizer:
    """Load the tokenizer of a Hugging Face model directory or a `.gguf` file.

    `chat_template` (Jinja source) overrides the model's own template.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and _is_gguf(path):
        return _load_gguf(path, chat_template)
    if os.path.isdir(path):
        return _load_hf_dir(path, chat_template)
    raise TokenizerLoadError(f"{path!r} is neither a model directory nor a GGUF file")


def _is_gguf(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _load_hf_dir(path: str, chat_template: str | None) -> Tokenizer:
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise TokenizerLoadError(f"cannot load a tokenizer from {path!r}: {exc}") from exc
    return Tokenizer(hf, eos_token_ids=_generation_config_eos(path),
                     chat_template=chat_template, name=path)


def _generation_config_eos(path: str) -> list[int]:
    """eos_token_id from generation_config.json (int or list): instruct models often end turns
    on a token other than the tokenizer's eos (Llama-3's <|eot_id|>)."""
    gen_path = os.path.join(path, "generation_config.json")
    if not os.path.isfile(gen_path):
        return []
    with open(gen_path, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token_id")
    if eos is None:
        return []
    return [int(i) for i in (eos if isinstance(eos, list) else [eos])]


def _load_gguf(path: str, chat_template: str | None) -> Tokenizer:
    from transformers import PreTrainedTokenizerFast

    try:
        metadata = read_gguf_metadata(path, _GGUF_STRING_ARRAYS)
        parts = build_gguf_tokenizer(metadata)
    except ValueError as exc:  # corrupt header, no vocabulary, malformed merges
        raise TokenizerLoadError(f"cannot build a tokenizer from {path!r}: {exc}") from exc
    eog_ids = [int(metadata[k]) for k in _GGUF_EOG_KEYS if k in metadata]
    if parts is None:
        # Tokenizer types we do not rebuild: transformers' converter (slower, imports torch).
        hf = PreTrainedTokenizerFast.from_pretrained(
            os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    else:
        hf = PreTrainedTokenizerFast(
            tokenizer_object=parts.backend, chat_template=parts.chat_template,
            clean_up_tokenization_spaces=False, **parts.special_tokens)
    return Tokenizer(hf, eos_token_ids=eog_ids, chat_template=chat_template, name=path)
