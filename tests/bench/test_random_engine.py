"""Engines on random weights through the config: EngineConfig(model=a directory with
config.json, load_format="random") -> LLM.from_config / build_engine. Weights never zero and
the same for the same seed, tokens identical run to run, a synthetic tokenizer only when the
directory has none, and a clear error for an unknown load_format."""
from __future__ import annotations

import dataclasses
import json

import pytest

from cormorant.bench.configs import config_dir, hf_config_dict, model_config
from cormorant.bench.context import EngineSettings
from cormorant.config import EngineConfig
from cormorant.frontend.builder import build_engine, build_tokenizer
from cormorant.frontend.llm import LLM
from cormorant.sampling_params import SamplingParams

SETTINGS = EngineSettings(device="cpu", num_kv_blocks=64, max_model_len=256)
PROMPTS = [[5, 17, 99, 3, 42], [7, 1, 2, 3, 4, 5, 6, 8]]


def _tokens(llm: LLM, params: SamplingParams) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in llm.generate(PROMPTS, params)]


def test_config_dir_holds_the_named_config_json():
    path = config_dir("tiny-qwen3")
    assert [p.name for p in path.iterdir()] == ["config.json"]
    assert json.loads((path / "config.json").read_text()) == hf_config_dict("tiny-qwen3")
    assert config_dir("tiny-qwen3") == path  # written once, found again
    with pytest.raises(ValueError, match="unknown benchmark model configuration"):
        config_dir("no-such-model")


def test_random_engine_from_config_dir():
    config = SETTINGS.engine_config("tiny-qwen3")
    assert config.load_format == "random" and config.model == str(config_dir("tiny-qwen3"))
    llm = LLM.from_config(config)
    assert llm.model_config == model_config("tiny-qwen3")
    params = list(llm.engine.runner.model.parameters())
    assert params and all(bool((p != 0).all()) for p in params)
    assert llm.tokenizer.name == "synthetic" and llm.tokenizer.decode([5, 7]) == "t5 t7"
    assert llm.tokenizer.encode("t5 t7") == [5, 7]
    out = llm.generate("t5 t7 t9", SamplingParams(max_tokens=4, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4
    assert out.outputs[0].text.split() == [f"t{i}" for i in out.outputs[0].token_ids]


def test_same_seed_same_tokens_run_to_run():
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    sampled = SamplingParams(max_tokens=8, temperature=1.0, seed=11, ignore_eos=True)
    first = LLM.from_config(SETTINGS.engine_config("tiny-llama"))
    expected = _tokens(first, greedy), _tokens(first, sampled)
    # Parameters, not buffers: the KV-cache scales are 1.0 whatever the seed.
    weights = {k: v.clone() for k, v in first.engine.runner.model.named_parameters()}
    del first
    again = LLM.from_config(SETTINGS.engine_config("tiny-llama"))
    assert (_tokens(again, greedy), _tokens(again, sampled)) == expected
    other_seed = dataclasses.replace(SETTINGS, seed=1).engine_config("tiny-llama")
    other = dict(build_engine(other_seed).runner.model.named_parameters())
    same = dict(again.engine.runner.model.named_parameters())
    assert all(v.equal(same[k]) for k, v in weights.items())
    assert not any(v.equal(other[k]) for k, v in weights.items())


def test_random_weights_keep_the_directory_tokenizer(tiny_qwen3):
    config = EngineConfig(model=tiny_qwen3, load_format="random", device="cpu")
    tokenizer = build_tokenizer(config)
    assert tokenizer.name == tiny_qwen3 and tokenizer.name != "synthetic"
    real = LLM(tiny_qwen3, device="cpu", num_kv_blocks=32)
    rand = LLM.from_config(dataclasses.replace(
        config, cache=dataclasses.replace(config.cache, num_blocks=32)))
    assert rand.tokenizer.encode("The quick brown fox") == real.tokenizer.encode(
        "The quick brown fox")
    real_w = real.engine.runner.model.state_dict()
    rand_w = rand.engine.runner.model.state_dict()
    assert real_w.keys() == rand_w.keys()
    assert not real_w["model.embed_tokens.weight"].equal(rand_w["model.embed_tokens.weight"])


def test_unknown_load_format_is_refused_by_name():
    config = dataclasses.replace(SETTINGS.engine_config("tiny-qwen3"), load_format="dummy")
    with pytest.raises(ValueError, match=r"unknown load_format 'dummy'; use one of auto, random"):
        LLM.from_config(config)


def test_b4_server_with_its_engine_in_another_process(tmp_path):
    """serve_random --engine-process: the child builds the engine from the EngineConfig alone
    (the "config" factory), the parent detokenizes with the same synthetic tokenizer."""
    import openai

    from cormorant.bench.serving import start_server

    server = start_server("tiny-qwen3", "cpu", "float32", tmp_path / "server.log",
                          ["--engine-process", "--max-num-seqs=4", "--max-model-len=256",
                           "--num-kv-blocks=64"], ready_timeout_s=120)
    try:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")
        outs = [client.completions.create(model=server.model_name, prompt=[5, 17, 99],
                                          max_tokens=5, temperature=0.0,
                                          extra_body={"ignore_eos": True})
                for _ in range(2)]
    finally:
        server.stop()
    assert server.model_name == "random-tiny-qwen3"
    words = outs[0].choices[0].text.split()
    assert len(words) == 5 and all(w[0] == "t" and w[1:].isdigit() for w in words)
    assert outs[1].choices[0].text == outs[0].choices[0].text
    # The same tokens as the offline engine on the same config and seed.
    llm = LLM.from_config(SETTINGS.engine_config("tiny-qwen3"))
    offline = llm.generate([[5, 17, 99]], SamplingParams(max_tokens=5, temperature=0.0,
                                                         ignore_eos=True))[0]
    assert offline.outputs[0].text.split() == words
