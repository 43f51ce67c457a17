"""CPU threads follow the cores the process may use: the affinity mask, capped by a cgroup
quota (v2 cpu.max, v1 cfs files), and the `threads` engine argument overrides both."""
from __future__ import annotations

import os

import pytest
import torch

from cormorant.engine_args import engine_config_from
from cormorant.runner.cpu_threads import cgroup_cpu_limit, configure_threads, usable_cpus


def test_cgroup_v2_quota_caps_the_affinity_count(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(str(tmp_path)) == 1.5
    assert usable_cpus(str(tmp_path)) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(str(tmp_path)) is None
    assert usable_cpus(str(tmp_path)) == len(os.sched_getaffinity(0))


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(str(tmp_path)) == 0.5
    assert usable_cpus(str(tmp_path)) == 1  # at least one
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(str(tmp_path)) is None


def test_affinity_is_followed_and_the_flag_overrides():
    before = torch.get_num_threads()
    mask = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(mask)})  # this process may now use one core
        assert usable_cpus() == 1
        assert configure_threads(None) == 1 and torch.get_num_threads() == 1
        assert configure_threads(3) == 3 and torch.get_num_threads() == 3
        with pytest.raises(ValueError, match="at least 1"):
            configure_threads(0)
    finally:
        os.sched_setaffinity(0, mask)
        torch.set_num_threads(before)


def test_threads_is_an_engine_argument():
    assert engine_config_from({"threads": 2}, "llm", model="m").threads == 2
    assert engine_config_from({}, "llm", model="m").threads is None
    assert engine_config_from({"quantization": "none"}, "llm", model="m").quantization == "none"
