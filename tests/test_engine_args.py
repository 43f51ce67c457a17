"""The one table of engine arguments: every command's flags, LLM(**kwargs), registry options,
and the engine seed reaching unseeded sampling."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from cormorant.config import EngineConfig
from cormorant.engine_args import (BY_NAME, COMMANDS, ENGINE_ARGS, EngineArgError,
                                   UnknownEngineArgError, add_engine_args, engine_config_from,
                                   names_for)

SAMPLED = dict(temperature=1.0, max_tokens=12, ignore_eos=True)


def _parser(command: str) -> argparse.ArgumentParser:
    """The real parser of `cormorant COMMAND`."""
    from cormorant.cli import build_parser

    subparsers = next(a for a in build_parser()._actions
                      if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


@pytest.mark.parametrize("command", ["serve", "generate", "chat", "bench"])
def test_every_command_takes_its_engine_flags_from_the_table(command):
    actions = {a.dest: a for a in _parser(command)._actions}
    for arg in ENGINE_ARGS:
        if command not in arg.commands:
            assert arg.name not in actions, arg.name
            continue
        action = actions[arg.name]
        assert arg.flag in action.option_strings
        assert action.default == arg.default_for(command)
        assert action.help.startswith(arg.help)


def test_flags_agree_across_commands_except_where_the_table_says():
    by_command = {c: {a.dest: a for a in _parser(c)._actions}
                  for c in ("serve", "generate", "chat", "bench")}
    for arg in ENGINE_ARGS:
        seen = {c: actions[arg.name] for c, actions in by_command.items() if arg.name in actions}
        assert set(seen) == set(arg.commands) - {"llm", "registry"}, arg.name
        defaults = {a.default for c, a in seen.items() if c not in arg.defaults}
        assert len(defaults) <= 1, (arg.name, defaults)
        assert len({a.help for c, a in seen.items() if c not in arg.defaults}) <= 1
    # Where a command differs, the table says why.
    assert all(arg.note for arg in ENGINE_ARGS if arg.defaults or arg.commands != COMMANDS)


def test_serve_has_the_flags_generate_has_and_the_other_way_round():
    serve, generate = set(names_for("serve")), set(names_for("generate"))
    assert {"memory_fraction", "enforce_eager", "num_kv_blocks"} <= serve & generate
    assert serve - generate == {"scheduling", "engine_process"}
    assert generate - serve == {"normalize_nfc", "strip_control_chars"}


def test_defaults_are_engine_configs_own():
    config = EngineConfig(model="m")
    assert BY_NAME["max_num_seqs"].default_for("generate") == config.scheduler.max_num_seqs
    assert BY_NAME["block_size"].default_for("registry") == config.cache.block_size
    assert BY_NAME["scheduling"].default_for("serve") == "fair" != config.scheduler.policy


def test_a_namespace_becomes_the_engine_config_it_asks_for():
    parser = _parser("serve")
    args = parser.parse_args(["--num-kv-blocks", "7", "--memory-fraction", "0.5",
                              "--enforce-eager", "--scheduling", "fifo", "--seed", "3",
                              "--max-num-seqs", "5", "--no-enable-prefix-caching",
                              "--load-format", "random"])
    config = engine_config_from(args, "serve", model="m")
    assert (config.cache.num_blocks, config.cache.memory_fraction) == (7, 0.5)
    assert config.enforce_eager and not config.cache.enable_prefix_caching
    assert (config.scheduler.policy, config.scheduler.max_num_seqs) == ("fifo", 5)
    assert (config.seed, config.load_format, config.model) == (3, "random", "m")
    assert engine_config_from(parser.parse_args([]), "serve", model="m").scheduler.policy \
        == "fair"


def test_mappings_are_checked_name_by_name_and_value_by_value():
    with pytest.raises(TypeError, match=r"'max_len'.*valid: .*max_model_len"):
        engine_config_from({"max_len": 1}, "llm", model="m")
    with pytest.raises(UnknownEngineArgError, match="scheduling"):
        engine_config_from({"scheduling": "fair"}, "registry", model="m")
    with pytest.raises(EngineArgError, match="max_num_seqs.*int"):
        engine_config_from({"max_num_seqs": "64"}, "registry", model="m")
    with pytest.raises(EngineArgError, match="attention_backend.*auto, torch, triton"):
        engine_config_from({"attention_backend": "flash"}, "llm", model="m")
    config = engine_config_from({"memory_fraction": 1, "num_kv_blocks": None}, "llm", model="m")
    assert config.cache.memory_fraction == 1.0 and config.async_scheduling is False


def test_llm_refuses_an_unknown_keyword_before_loading(tiny_llama):
    from cormorant import LLM

    with pytest.raises(TypeError, match="'num_blocks'.*num_kv_blocks"):
        LLM(tiny_llama, num_blocks=8)


def test_registry_entries_use_the_table(tmp_path):
    from cormorant.hosting.loader import spec_engine_config
    from cormorant.hosting.registry import RegistryError, registry_from_dict

    entry = {"name": "m", "source": "builtin:smollm2", "dtype": "float32",
             "engine": {"num_kv_blocks": 9, "enforce_eager": True, "memory_fraction": 0.25}}
    spec = registry_from_dict({"models": [entry]}).specs["m@1"]
    config = spec_engine_config(spec, tmp_path)
    assert (config.cache.num_blocks, config.enforce_eager, config.dtype) == (9, True, "float32")
    assert config.cache.memory_fraction == 0.25 and config.model == str(tmp_path)
    for bad, words in (({"num_blocks": 9}, ["num_blocks", "num_kv_blocks"]),
                       ({"max_num_seqs": "9"}, ["max_num_seqs", "int"])):
        with pytest.raises(RegistryError) as err:
            registry_from_dict({"models": [{**entry, "engine": bad}]})
        assert all(w in str(err.value) for w in words), err.value


# -- the engine seed reaches unseeded sampling -----------------------------------------------

def _sampled(path: str, seed: int) -> list[int]:
    from cormorant import LLM, SamplingParams

    llm = LLM(path, seed=seed, num_kv_blocks=32)
    outs = llm.generate(["The quick", "Paris is"], SamplingParams(**SAMPLED))
    return [o.outputs[0].token_ids for o in outs]


def test_engine_seed_seeds_unseeded_sampling(tiny_llama):
    one = _sampled(tiny_llama, 1)
    assert _sampled(tiny_llama, 1) == one
    assert _sampled(tiny_llama, 2) != one


def test_a_request_seed_still_wins_over_the_engine_seed(tiny_llama):
    from cormorant import LLM, SamplingParams

    params = SamplingParams(seed=7, **SAMPLED)
    a = LLM(tiny_llama, seed=1, num_kv_blocks=32).generate("The quick", params)
    b = LLM(tiny_llama, seed=2, num_kv_blocks=32).generate("The quick", params)
    assert a[0].outputs[0].token_ids == b[0].outputs[0].token_ids


def test_generate_seed_flag_changes_sampled_text(tiny_llama):
    from cormorant import LLM, SamplingParams

    def cli(seed: int) -> str:
        done = subprocess.run([sys.executable, "-m", "cormorant", "generate", "--model",
                               tiny_llama, "--num-kv-blocks", "32", "--temperature", "1.0",
                               "--max-tokens", "12", "--seed", str(seed), "The quick"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    expected = LLM(tiny_llama, seed=1, num_kv_blocks=32).generate(
        "The quick", SamplingParams(temperature=1.0, max_tokens=12))[0].outputs[0].text
    first = cli(1)
    assert first == expected + "\n"
    assert cli(2) != first


def test_the_docs_list_the_tables_names():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme, models = (root / "README.md").read_text(), (root / "docs" / "models.md").read_text()
    for arg in ENGINE_ARGS:
        flag = arg.flag if arg.type is not bool else "--[no-]" + arg.flag[2:]
        assert flag in readme, flag
    for name in names_for("registry"):
        assert f"`{name}`" in models, name
