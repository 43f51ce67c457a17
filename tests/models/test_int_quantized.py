"""Int4/int8 weight-only checkpoints (AWQ, GPTQ, compressed-tensors) and `--quantization int4|int8`.

Each format is written at test time in its exact on-disk layout by tests/models/int_checkpoints
(compressed-tensors' own compressors; AWQ/GPTQ following their reference packing, AWQ
dequantized by compressed-tensors' AutoAWQ converter) next to a dense checkpoint of the
dequantized weights. cormorant's quantized model must compute the dequantized model: fp32
logits within 1e-4 of cormorant's dense load and of transformers' (the logits are of size
~8; the two agree to ~1e-5), while differing from the original unquantized weights by far
more (so the quantization is real), and greedy output token-identical over 4 prompts x 32
tokens (through the model for each format, and for AWQ through the real HTTP server and the
openai client). Bad checkpoints fail at load with an error that says what is wrong.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cormorant.layers import int_packing
from cormorant.layers.linear import LinearBase
from cormorant.models.loader import load_model
from cormorant.runner.kv_cache import module_bytes
from cormorant.sampling_params import SamplingParams
from int_checkpoints import write_int_checkpoint
from model_test_utils import PagedRunner
from tiny import load_reference, save_model

TOKENS = [1, 5, 9, 33, 70, 100, 3, 200, 17, 45, 300, 8]
LOGIT_TOL = 1e-4
PROMPTS = ["The quick brown fox", "What is the capital", "def add(a, b):", "0123 +-*/"]
PROMPT_IDS = [[1, 5, 9, 33], [70, 100, 3], [200, 17, 45, 300, 8], [11, 400]]

CASES = {
    "awq-g128": ("llama", "awq", dict(group=128)),
    "awq-g64-qwen3": ("qwen3", "awq", dict(group=64)),
    "gptq-4b-g128-sym": ("llama", "gptq", dict(bits=4, group=128, sym=True, desc_act=False)),
    "gptq-4b-g64-asym": ("llama", "gptq", dict(bits=4, group=64, sym=False, desc_act=False)),
    "gptq-4b-g32-asym-act": ("llama", "gptq", dict(bits=4, group=32, sym=False,
                                                   desc_act=True)),
    "gptq-4b-g128-sym-act-qwen3": ("qwen3", "gptq", dict(bits=4, group=128, sym=True,
                                                         desc_act=True)),
    "gptq-8b-g64-asym-v2": ("llama", "gptq", dict(bits=8, group=64, sym=False,
                                                  desc_act=False, v2=True)),
    "ct-w4a16-g128-sym": ("llama", "pack-quantized", dict(bits=4, group=128, sym=True)),
    "ct-w4a16-g32-asym-qwen3": ("qwen3", "pack-quantized", dict(bits=4, group=32, sym=False)),
    "ct-w8a16-channel": ("llama", "pack-quantized", dict(bits=8, group=None, sym=True)),
    "ct-int8-naive-g64-asym": ("llama", "naive-quantized", dict(bits=8, group=64, sym=False)),
}
GREEDY = ["awq-g128", "gptq-4b-g32-asym-act", "ct-w4a16-g32-asym-qwen3",
          "ct-int8-naive-g64-asym"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Tiny dense models wide enough for group 128 (hidden 128, intermediate 256)."""
    root = tmp_path_factory.mktemp("int-src")
    return {arch: save_model(root / arch, arch, hidden_size=128, intermediate_size=256)
            for arch in ("llama", "qwen3")}


@pytest.fixture(scope="module")
def checkpoints(sources, tmp_path_factory):
    made: dict[str, tuple[Path, Path]] = {}
    root = tmp_path_factory.mktemp("int-ckpt")

    def get(case: str) -> tuple[Path, Path]:
        if case not in made:
            arch, fmt, opt = CASES[case]
            made[case] = write_int_checkpoint(sources[arch], root / case, fmt, **opt)
        return made[case]
    return get


def _logits(path: Path) -> tuple[torch.Tensor, torch.nn.Module]:
    model, config = load_model(str(path), "float32", "cpu", quantization="auto")
    return PagedRunner(model, config, 1, 64).step({0: TOKENS})[0], model


@pytest.mark.parametrize("case", list(CASES))
def test_each_format_computes_its_dequantized_model(case, checkpoints, sources):
    quantized, dequantized = checkpoints(case)
    got, model = _logits(quantized)
    dense, _ = _logits(dequantized)
    with torch.no_grad():
        hf = load_reference(dequantized)(torch.tensor([TOKENS])).logits[0]
    assert (got - dense).abs().max() <= LOGIT_TOL
    assert (got - hf).abs().max() <= LOGIT_TOL
    original, _ = _logits(sources[CASES[case][0]])
    assert (got - original).abs().max() > 100 * LOGIT_TOL  # the weights really are quantized
    layer = model.model.layers[0].mlp.gate_up_proj
    assert not hasattr(layer, "weight") and layer.int_qweight.dtype == torch.int32
    assert (layer.int_zeros is None) == CASES[case][2].get("sym", False)  # none read if sym
    bits = CASES[case][2].get("bits", 4)
    assert layer.int_qweight.shape == (128 * bits // 32, 512)  # [K / (32 / bits), N]


def _greedy(path: Path) -> list[list[int]]:
    """4 prompts x 32 greedy tokens through the model in packed batches (prefill, then
    decode steps of all four)."""
    model, config = load_model(str(path), "float32", "cpu", quantization="auto")
    runner = PagedRunner(model, config, len(PROMPT_IDS), 64)
    logits = runner.step(dict(enumerate(PROMPT_IDS)))
    out: list[list[int]] = [[] for _ in PROMPT_IDS]
    for _ in range(32):
        for seq, rows in logits.items():
            out[seq].append(int(rows[-1].argmax()))
        logits = runner.step({seq: [ids[-1]] for seq, ids in enumerate(out)})
    return out


@pytest.mark.parametrize("case", GREEDY[1:])
def test_greedy_output_is_token_identical_to_the_dequantized_model(case, checkpoints):
    quantized, dequantized = (_greedy(path) for path in checkpoints(case))
    assert quantized == dequantized
    assert len({tuple(ids) for ids in quantized}) == len(PROMPT_IDS)  # four real sequences


def test_the_server_serves_an_awq_checkpoint_like_its_dequantized_model(checkpoints):
    """The real HTTP server on the AWQ checkpoint, through the openai client, answers what the
    offline engine on the dequantized checkpoint generates (greedy, 4 prompts x 32 tokens)."""
    from cormorant import LLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
    from server_helpers import running_model_server

    quantized, dequantized = checkpoints(GREEDY[0])
    llm = LLM(str(dequantized), num_kv_blocks=64)
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    expected = [o.outputs[0] for o in llm.generate(PROMPTS, params)]
    del llm
    assert all(len(o.token_ids) == 32 for o in expected)
    with running_model_server(str(quantized), max_model_len=256) as server:
        answer = server.client().completions.create(
            model=server.model, prompt=PROMPTS, max_tokens=32, temperature=0.0,
            extra_body={"ignore_eos": True})
    texts = [c.text for c in sorted(answer.choices, key=lambda c: c.index)]
    assert texts == [o.text for o in expected]
    assert answer.usage.completion_tokens == 4 * 32


def test_runtime_packing_matches_compressed_tensors_pack_to_int32():
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    gen = torch.Generator().manual_seed(0)
    for bits in (4, 8):
        codes = torch.randint(0, 2 ** bits, (64, 24), generator=gen, dtype=torch.int32)
        theirs = pack_to_int32((codes - 2 ** (bits - 1)).to(torch.int8), bits, packed_dim=0)
        assert torch.equal(int_packing.pack(codes, bits, 0), theirs)
        assert torch.equal(int_packing.unpack(theirs, bits, 0), codes)


# -- bad checkpoints fail at load ----------------------------------------------------------------
def _edit(path: Path, tmp_path: Path, tensors=None, config=None) -> Path:
    out = tmp_path / "edited"
    out.mkdir()
    for f in path.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(path / "model.safetensors"))
    if tensors:
        tensors(weights)
        save_file(weights, str(out / "model.safetensors"))
    if config:
        cfg = json.loads((path / "config.json").read_text())
        config(cfg["quantization_config"])
        (out / "config.json").write_text(json.dumps(cfg))
    return out


LAYER = "model.layers.1.self_attn.k_proj"


@pytest.mark.parametrize("case,edit,message", [
    ("awq-g128", lambda w: w.update({f"{LAYER}.scales": w[f"{LAYER}.scales"][:, :-8]}),
     "does not fit"),
    ("gptq-4b-g64-asym", lambda w: w.pop(f"{LAYER}.qzeros"), "lacks"),
    ("ct-w4a16-g32-asym-qwen3", lambda w: w.pop(f"{LAYER}.weight_zero_point"), "lacks"),
    ("ct-w4a16-g128-sym", lambda w: w.update({f"{LAYER}.weight_shape": torch.tensor([64, 96])}),
     "weight_shape"),
    ("gptq-4b-g32-asym-act",
     lambda w: w.update({f"{LAYER.replace('k_', 'o_')}.g_idx":
                         torch.zeros_like(w[f"{LAYER.replace('k_', 'o_')}.g_idx"])}),
     "g_idx does not put 32 input rows"),
])
def test_bad_tensors_fail_at_load(case, edit, message, checkpoints, tmp_path):
    bad = _edit(checkpoints(case)[0], tmp_path, tensors=edit)
    with pytest.raises(ValueError, match=message):
        load_model(str(bad), "float32", "cpu", quantization="auto")


@pytest.mark.parametrize("case,edit,message", [
    ("awq-g128", lambda c: c.update(group_size=48),
     "group size 48 does not divide the 128 input features of model.layers.0"),
    ("awq-g128", lambda c: c.update(version="gemv"), "supported: 4-bit GEMM"),
    ("gptq-4b-g64-asym", lambda c: c.update(bits=3), "supported: 4 or 8 bits"),
    ("ct-w4a16-g128-sym", lambda c: c["config_groups"]["group_0"].update(
        input_activations={"num_bits": 8, "type": "int"}), "weight-only"),
    ("ct-w4a16-g128-sym", lambda c: c["config_groups"]["group_0"]["weights"].update(
        num_bits=2), "supported: 4/8-bit pack-quantized"),
])
def test_bad_configs_fail_at_load_naming_what_is_supported(case, edit, message, checkpoints,
                                                           tmp_path):
    bad = _edit(checkpoints(case)[0], tmp_path, config=edit)
    with pytest.raises(ValueError, match=message):
        load_model(str(bad), "float32", "cpu", quantization="auto")


# -- --quantization int4 / int8 on dense and random weights ------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
def test_online_quantization_rounds_each_weight_to_its_group_grid(bits, sources):
    dense, _ = load_model(str(sources["llama"]), "float32", "cpu")
    quant, _ = load_model(str(sources["llama"]), "float32", "cpu", quantization=f"int{bits}")
    w = dense.model.layers[0].mlp.down_proj.weight.t()  # [K=256, N=128]
    layer = quant.model.layers[0].mlp.down_proj
    deq = int_packing.dequantize(layer.int_qweight, layer.int_scales, layer.int_zeros, bits, 128)
    half_step = layer.int_scales.repeat_interleave(128, 0) / 2
    assert ((deq - w).abs() <= half_step * 1.0001).all()
    assert layer.int_scales.shape == (2, 128)  # group 128 along K = 256
    x = torch.randn(3, 256)
    torch.testing.assert_close(layer(x), x @ deq, atol=1e-5, rtol=1e-5)
    linear_bytes = [sum(module_bytes(m) for m in model.modules() if isinstance(m, LinearBase))
                    for model in (dense, quant)]  # what the memory report and KV sizing count
    assert linear_bytes[1] < linear_bytes[0] * (bits / 32 + 0.04)  # codes + fp32 scales


def test_online_int4_serves_random_weights(tiny_llama):
    from cormorant import LLM
    from cormorant.layers.int_linear import IntWeightMethod

    model, _ = load_model(tiny_llama, "float32", "cpu", load_format="random",
                          quantization="int4")
    layers = [m for m in model.modules() if isinstance(m, LinearBase)]
    assert layers and all(isinstance(m.method, IntWeightMethod) for m in layers)
    llm = LLM(tiny_llama, load_format="random", quantization="int4", num_kv_blocks=32)
    out = llm.generate(["Hello"], SamplingParams(temperature=0.0, max_tokens=8,
                                                 ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 8
