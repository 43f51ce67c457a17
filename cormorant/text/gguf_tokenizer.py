"""Build a `tokenizers.Tokenizer` from GGUF tokenizer metadata, without loading any tensors.

GGUF files carry no tokenizer.json: llama.cpp stores the vocabulary, merges (or scores), token
types and special ids as metadata. We rebuild the two families that cover almost every
decoder-only model in the wild, as transformers' GGUF integration does (same ids), with one
deliberate difference for SentencePiece (see `_sentencepiece_bpe`):

* `tokenizer.ggml.model == "gpt2"`: byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM, ...).
* `tokenizer.ggml.model == "llama"`: SentencePiece BPE with byte fallback (Llama-2, Mistral),
  built like Llama-2's own tokenizer.json so ids match sentencepiece and llama.cpp.

Anything else (T5 unigram, Gemma's and Phi-3's SentencePiece quirks, ...) returns None from
`build_gguf_tokenizer`, and the caller falls back to transformers' slower converter.

Imports: the `tokenizers` library and text.gguf_metadata only.
"""
from __future__ import annotations

from dataclasses import dataclass

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from cormorant.text.gguf_metadata import (
    TOKEN_TYPE_CONTROL,
    TOKEN_TYPE_UNKNOWN,
    TOKEN_TYPE_USER_DEFINED,
)

# SentencePiece GGUFs of these architectures need fixes we leave to transformers.
_SPM_ARCHS_WITH_QUIRKS = frozenset({"gemma", "gemma2", "gemma3", "gemma3n", "phi3"})

# Pre-tokenizer split regexes by `tokenizer.ggml.pre`, from llama.cpp's llama-vocab.cpp (the
# same table transformers uses). Unlisted names get GPT-2's regex (ByteLevel's built-in one).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O_SPLIT),
}


@dataclass
class GGUFTokenizerParts:
    """What the Tokenizer wrapper needs from a GGUF besides the backend itself."""

    backend: Tokenizer
    special_tokens: dict[str, str]  # {"bos_token": "<s>", "eos_token": ..., ...} where present
    chat_template: str | None


def build_gguf_tokenizer(metadata: dict) -> GGUFTokenizerParts | None:
    """Build the tokenizer a GGUF's metadata describes, or None if it is not gpt2/llama BPE."""
    kind = metadata.get("tokenizer.ggml.model")
    arch = metadata.get("general.architecture", "")
    if "tokenizer.ggml.tokens" not in metadata:
        raise ValueError("GGUF metadata has no tokenizer.ggml.tokens: no tokenizer in this file")
    if kind == "gpt2":
        backend, tokens = _byte_level_bpe(metadata)
    elif kind == "llama" and arch not in _SPM_ARCHS_WITH_QUIRKS:
        backend, tokens = _sentencepiece_bpe(metadata)
    else:
        return None
    special = _special_token_strings(metadata, tokens)
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    backend.post_processor = _bos_eos_template(special, metadata, add_bos, add_eos)
    return GGUFTokenizerParts(backend, special, metadata.get("tokenizer.chat_template"))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of byte-level vocabularies."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _byte_level_bpe(metadata: dict) -> tuple[Tokenizer, list[str]]:
    spelling = bytes_to_unicode()
    alphabet = frozenset(spelling.values())
    # Some converters store a token's plain text instead of its byte-level spelling; respell
    # those so BPE can find them (transformers does the same, so ids agree).
    tokens = [
        tok if alphabet.issuperset(tok) else "".join(spelling[b] for b in tok.encode("utf-8"))
        for tok in metadata["tokenizer.ggml.tokens"]
    ]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    model = models.BPE(vocab=vocab, merges=_merges(metadata, vocab, tokens), dropout=None,
                       continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    backend = Tokenizer(model)
    split = PRE_TOKENIZER_SPLITS.get(metadata.get("tokenizer.ggml.pre", ""))
    if split is None:
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    backend.decoder = decoders.ByteLevel()
    # A "control" token spelled outside the byte alphabet is a converter mislabel; making it
    # special would add a new id past the model's vocabulary, so it stays a plain token.
    original = metadata["tokenizer.ggml.tokens"]
    _add_typed_tokens(backend, metadata, tokens,
                      keep_special=lambda i: alphabet.issuperset(original[i]))
    return backend, tokens


def _sentencepiece_bpe(metadata: dict) -> tuple[Tokenizer, list[str]]:
    tokens = list(metadata["tokenizer.ggml.tokens"])
    vocab = {tok: i for i, tok in enumerate(tokens)}
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    model = models.BPE(vocab=vocab, merges=_merges(metadata, vocab, tokens), dropout=None,
                       fuse_unk=True, byte_fallback=True, unk_token=unk)
    backend = Tokenizer(model)
    add_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    # SentencePiece's dummy prefix as a normalizer, i.e. the Llama-2 tokenizer.json and
    # llama.cpp behaviour: every text segment (also one after a special token) gets a "▁",
    # even one that already starts with a space. transformers' GGUF path uses Metaspace
    # instead, which skips the prefix there and so loses a leading space on a round trip.
    steps = [normalizers.Prepend("▁")] if add_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(steps)
    _add_typed_tokens(backend, metadata, tokens, keep_special=lambda i: True)
    return backend, tokens


def _merges(metadata: dict, vocab: dict[str, int], tokens: list[str]) -> list[tuple[str, str]]:
    merges = metadata.get("tokenizer.ggml.merges")
    if merges is not None:
        pairs = [tuple(m.split(" ")) for m in merges]
        bad = next((m for m, p in zip(merges, pairs) if len(p) != 2), None)
        if bad is not None:
            raise ValueError(f"GGUF merge {bad!r} is not two space-separated tokens")
        return pairs
    scores = metadata.get("tokenizer.ggml.scores")
    if scores is None:
        raise ValueError("GGUF tokenizer has neither merges nor scores to derive them from")
    return merges_from_scores(vocab, dict(zip(tokens, scores)))


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """SentencePiece files have scores, not merges: every split of a token into two vocab
    pieces is a merge, ranked by the merged token's score (best first). Mirrors
    transformers' `generate_merges`, including its tie-breaking, so ids agree."""
    ranked = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        ranked.extend(local)
    ranked.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in ranked]


def _add_typed_tokens(backend: Tokenizer, metadata: dict, tokens: list[str], keep_special) -> None:
    """Control/unknown tokens become special (skippable) tokens, user-defined ones plain added
    tokens; both are matched whole in the input instead of being cut into BPE pieces."""
    types = metadata.get("tokenizer.ggml.token_type") or ()
    special, added = [], []
    for i, (tok, kind) in enumerate(zip(tokens, types)):
        if kind in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN) and keep_special(i):
            special.append(AddedToken(tok, normalized=False, special=True))
        elif kind == TOKEN_TYPE_USER_DEFINED and keep_special(i):
            added.append(AddedToken(tok, normalized=False, special=False))
    if special:
        backend.add_special_tokens(special)
    if added:
        backend.add_tokens(added)


def _special_token_strings(metadata: dict, tokens: list[str]) -> dict[str, str]:
    out = {}
    for name, key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"),
                      ("pad_token", "padding")):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and 0 <= token_id < len(tokens):
            out[name] = tokens[token_id]
    return out


def _bos_eos_template(special: dict[str, str], metadata: dict, add_bos: bool,
                      add_eos: bool) -> processors.TemplateProcessing:
    """BOS/EOS around encoded text as the GGUF's add_bos/add_eos flags say (llama.cpp does
    the same); the chat template path encodes with add_special_tokens=False and skips it."""
    pieces: dict[str, dict] = {}
    for alias, flag, name in (("BOS", add_bos, "bos"), ("EOS", add_eos, "eos")):
        token = special.get(f"{name}_token")
        if flag and token is not None:
            # Aliased: the template syntax is "ID:type_id", which a token holding ":" breaks.
            token_id = metadata[f"tokenizer.ggml.{name}_token_id"]
            pieces[alias] = {"id": alias, "ids": [token_id], "tokens": [token]}

    def sequence(piece: str, type_id: int) -> list[str]:
        return ([f"BOS:{type_id}"] if "BOS" in pieces else []) + [f"{piece}:{type_id}"] + (
            [f"EOS:{type_id}"] if "EOS" in pieces else [])

    return processors.TemplateProcessing(single=sequence("$A", 0),
                                         pair=sequence("$A", 0) + sequence("$B", 1),
                                         special_tokens=list(pieces.values()))
