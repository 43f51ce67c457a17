"""Fixtures for text/ tests: tokenizers built at test time (no model hub).

* a byte-level BPE (GPT-2 / Llama-3 style) saved as a Hugging Face directory, and
* a SentencePiece BPE with byte fallback (Llama-2 style), trained with `sentencepiece` and
  written as a tokenizer-only GGUF file, the way llama.cpp's converter stores one.

Both are session-scoped: training takes milliseconds, loading through transformers does not.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from cormorant.text.tokenizer import Tokenizer, load_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Café crème brûlée à la française, naïve résumé, déjà vu.",
    "中文字符测试，这是一个句子。我们喜欢中文。",
    "Emoji time: 🦜 parrots 🦜 and 🐍 snakes! 🦜🦜",
    "Numbers 12345 and 67890 in text, 3.14159.",
    "    indented code:\n\tdef f(x): return x + 1\n",
    "Hello world, hello there. What is the capital of France? Paris.",
] * 20

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('system messages are not supported') }}{% endif %}"
    "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
)


def _train_byte_level_bpe():
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def write_hf_dir(path: Path, *, chat_template: str | None, gen_eos: list[int] | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _train_byte_level_bpe().save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>",
              "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    if gen_eos is not None:
        (path / "generation_config.json").write_text(json.dumps({"eos_token_id": gen_eos}))
    return path


@pytest.fixture(scope="session")
def hf_dir_factory():
    """write_hf_dir, for tests that need a directory of their own."""
    return write_hf_dir


@pytest.fixture(scope="session")
def byte_level_dir(tmp_path_factory) -> Path:
    # generation_config names <|im_end|> (id 2) as eos, as instruct models do.
    return write_hf_dir(tmp_path_factory.mktemp("bytelevel"), chat_template=CHATML_TEMPLATE,
                        gen_eos=[2, 0])


@pytest.fixture(scope="session")
def byte_level_tok(byte_level_dir) -> Tokenizer:
    return load_tokenizer(str(byte_level_dir))


@pytest.fixture(scope="session")
def spm_processor():
    import sentencepiece as spm

    model = io.BytesIO()
    # identity normalization: what Llama-2-style models use, so sentencepiece is a fair oracle
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=0.99, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", minloglevel=2)
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def write_spm_gguf(path: Path, sp, *, chat_template: str | None = SPM_TEMPLATE,
                   arch: str = "llama") -> Path:
    """A tokenizer-only GGUF as llama.cpp writes a SentencePiece vocabulary: pieces, scores
    and token types, no merges."""
    import gguf

    n = sp.get_piece_size()
    types = [gguf.TokenType.CONTROL if sp.is_control(i) else gguf.TokenType.UNKNOWN
             if sp.is_unknown(i) else gguf.TokenType.BYTE if sp.is_byte(i)
             else gguf.TokenType.NORMAL for i in range(n)]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in range(n)])
    writer.add_token_scores([sp.get_score(i) for i in range(n)])
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="session")
def spm_gguf_factory():
    """write_spm_gguf, for tests that need a variant of the SentencePiece GGUF."""
    return write_spm_gguf


@pytest.fixture(scope="session")
def spm_gguf(tmp_path_factory, spm_processor) -> Path:
    return write_spm_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf", spm_processor)


@pytest.fixture(scope="session")
def spm_tok(spm_gguf) -> Tokenizer:
    return load_tokenizer(str(spm_gguf))
