"""CPU threads: how many cores this process may use (affinity, cgroup quota), and setting them.

`usable_cpus()` is the smallest of the CPUs in the process's affinity mask
(`os.sched_getaffinity`) and the cgroup's CPU quota (`cpu.max` of cgroup v2, or
`cpu.cfs_quota_us / cpu.cfs_period_us` of v1), rounded up; os.cpu_count() where neither is
known. More threads than that only makes torch's workers wait on each other.
Imports: torch and the standard library.
"""
from __future__ import annotations

import logging
import math
import os

import torch

log = logging.getLogger(__name__)
CGROUP_ROOT = "/sys/fs/cgroup"


def cgroup_cpu_limit(root: str = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup quota allows (e.g. 1.5), or None without a quota."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, _, period = f.read().strip().partition(" ")
        if quota != "max":
            return int(quota) / int(period or 100000)
        return None
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus(root: str = CGROUP_ROOT) -> int:
    """Cores this process may run on at once: affinity mask and cgroup quota, at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)


def configure_threads(requested: int | None) -> int:
    """Set torch's intra-op threads to `requested` (validated) or usable_cpus(); returns it."""
    if requested is not None and requested < 1:
        raise ValueError(f"threads must be at least 1, got {requested}")
    threads = requested or usable_cpus()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    log.info("CPU threads: %d (usable cores: %d)", threads, usable_cpus())
    return threads
