"""Tiny random-weight models and a byte-level BPE tokenizer made at test time (no hub).

Used by the engine, server and benchmark tests through the fixtures in tests/conftest.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "What is the capital of France? The capital of France is Paris.",
    "Café, naïve, façade, crème brûlée — déjà vu. 中文字符测试。 Emoji: 🦜🐍🚀 ✓",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "0123456789 +-*/=()[]{}<>!?@#$%^&_|~`'\";:,.",
]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def save_tokenizer(path: Path, vocab_size: int = 400) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))


def save_model(path: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """A tiny random model of the given family, fp32, safetensors, with a tokenizer."""
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    save_tokenizer(path)
    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  rms_norm_eps=1e-6, bos_token_id=0, eos_token_id=2, tie_word_embeddings=False)
    common.update(overrides)
    if arch == "llama":
        config = transformers.LlamaConfig(**common)
        cls = transformers.LlamaForCausalLM
    elif arch == "qwen2":
        config = transformers.Qwen2Config(**common)
        cls = transformers.Qwen2ForCausalLM
    elif arch == "qwen3":
        common.setdefault("head_dim", 32)
        config = transformers.Qwen3Config(**common)
        cls = transformers.Qwen3ForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32)
    with torch.no_grad():  # larger weights than the init: sharper, tie-free distributions
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    model.save_pretrained(str(path), safe_serialization=True)
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    return path


def load_reference(path: Path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="eager")
    return model.eval()


@torch.no_grad()
def reference_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Greedy decoding by full forward passes: the plainest possible reference."""
    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([ids])).logits[0, -1]
        ids.append(int(torch.argmax(logits)))
    return ids[len(prompt_ids):]


@torch.no_grad()
def reference_logprobs(model, prompt_ids: list[int], output_ids: list[int]) -> list[float]:
    ids = torch.tensor([prompt_ids + output_ids])
    logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    start = len(prompt_ids) - 1
    return [float(logprobs[start + i, t]) for i, t in enumerate(output_ids)]
