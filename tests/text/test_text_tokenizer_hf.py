"""load_tokenizer on a Hugging Face directory (tokenizer.json built at test time)."""
from __future__ import annotations

import pytest

from cormorant.text.tokenizer import ChatTemplateError, TokenizerLoadError, load_tokenizer

CHAT = [{"role": "user", "content": "Hello there"}]


def test_encode_decode_roundtrip(byte_level_tok):
    text = "Café 中文 🦜 , hello ."
    ids = byte_level_tok.encode(text)
    # Decode must not rewrite " ," and " ." (clean_up_tokenization_spaces), or streamed text
    # would differ from the final text.
    assert byte_level_tok.decode(ids) == text


def test_special_ids_and_sizes(byte_level_tok):
    tok = byte_level_tok
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tok.bos_token_id == 1
    # tokenizer eos first, then generation_config's, without duplicates
    assert tok.eos_token_ids == (0, 2)
    assert tok.vocab_size == len(tok.hf) == 420
    assert {0, 1} <= tok.all_special_ids
    ids = tok.encode("a<|im_end|>b")
    assert 2 in ids  # special tokens in text are matched whole
    assert tok.decode(ids) == "ab"
    assert tok.decode(ids, skip_special_tokens=False) == "a<|im_end|>b"


def test_chat_template_render_and_ids(byte_level_tok):
    text = byte_level_tok.render_chat(CHAT)
    assert text == "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    ids = byte_level_tok.apply_chat_template(CHAT)
    assert ids == byte_level_tok.encode(text, add_special_tokens=False)
    assert ids[0] == 1 and ids.count(2) == 1
    no_prompt = byte_level_tok.render_chat(CHAT, add_generation_prompt=False)
    assert no_prompt == "<|im_start|>user\nHello there<|im_end|>\n"


def test_chat_template_override(byte_level_dir):
    tok = load_tokenizer(str(byte_level_dir), chat_template="{{ messages[0]['content'] }}!")
    assert tok.render_chat(CHAT) == "Hello there!"


def test_no_chat_template_is_a_clear_error(tmp_path, hf_dir_factory):
    tok = load_tokenizer(str(hf_dir_factory(tmp_path, chat_template=None, gen_eos=None)))
    assert tok.eos_token_ids == (0,)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        tok.apply_chat_template(CHAT)


def test_template_exception_becomes_chat_template_error(spm_tok):
    with pytest.raises(ChatTemplateError, match="system messages are not supported"):
        spm_tok.render_chat([{"role": "system", "content": "x"}])


def test_continue_final_message_conflicts_with_generation_prompt(byte_level_tok):
    with pytest.raises(ChatTemplateError):
        byte_level_tok.render_chat(CHAT, continue_final_message=True)


def test_bad_paths(tmp_path):
    with pytest.raises(TokenizerLoadError):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerLoadError):
        load_tokenizer(str(tmp_path / "empty"))
    (tmp_path / "x.bin").write_bytes(b"not a gguf")
    with pytest.raises(TokenizerLoadError):
        load_tokenizer(str(tmp_path / "x.bin"))
