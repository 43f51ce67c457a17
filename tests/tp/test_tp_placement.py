"""Model pool placement: a registry entry's `devices = [K, ...]` becomes one engine over those
consecutive CUDA devices (device cuda:K, tensor_parallel_size N); anything else is refused by
name when the registry is read. (Running such engines needs the GPUs: the multi-GPU issue.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from cormorant.hosting.loader import spec_engine_config
from cormorant.hosting.registry import RegistryError, registry_from_dict

TOML_LIKE = {"models": [
    {"name": "big", "source": "builtin:smollm2", "devices": [0, 1],
     "engine": {"max_model_len": 4096}},
    {"name": "small", "source": "builtin:smollm2", "devices": [2]},
    {"name": "cpu", "source": "builtin:smollm2", "device": "cpu"}]}


def test_devices_place_each_model_on_its_own_gpus():
    registry = registry_from_dict(TOML_LIKE)
    configs = {name: spec_engine_config(registry.specs[registry.route(name)], Path("/models/x"))
               for name in ("big", "small", "cpu")}
    assert (configs["big"].device, configs["big"].tensor_parallel_size) == ("cuda:0", 2)
    assert configs["big"].scheduler.max_model_len == 4096
    assert (configs["small"].device, configs["small"].tensor_parallel_size) == ("cuda:2", 1)
    assert (configs["cpu"].device, configs["cpu"].tensor_parallel_size) == ("cpu", 1)


@pytest.mark.parametrize("entry,words", [
    ({"devices": [1, 0]}, ["consecutive", "[1, 0]"]),
    ({"devices": [0, 2]}, ["consecutive"]),
    ({"devices": []}, ["list of CUDA device numbers"]),
    ({"devices": "0,1"}, ["list of CUDA device numbers"]),
    ({"devices": [0, 1], "device": "cuda:0"}, ["devices replaces device"]),
    ({"devices": [0, 1], "engine": {"tensor_parallel_size": 2}}, ["tensor_parallel_size"]),
])
def test_bad_placements_are_refused_by_name(entry, words):
    with pytest.raises(RegistryError) as info:
        registry_from_dict({"models": [{"name": "m", "source": "builtin:smollm2", **entry}]})
    for word in words:
        assert word in str(info.value)
