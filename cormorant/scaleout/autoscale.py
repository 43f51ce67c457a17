"""The autoscaling policy of the engine deployment: replicas from the engines' own load.

Ray Serve's controller calls `engine_load_policy(ctx)` every control-loop period; Serve then
applies min/max replicas and the up/down-scale delays around it. The desired count is the
larger of two needs: the ongoing requests (the engines' running + waiting, queued at handles
included) over `target_ongoing_requests` per replica, and the KV-cache use the replicas
report (`record_autoscaling_stats`) over `target_kv_usage` per replica, so long prompts that
fill the cache scale out even at few requests. Plain arithmetic, tested without Ray.
"""
from __future__ import annotations

import math
from typing import Any


def desired_replicas(num_requests: float, kv_usages: list[float], target_requests: float,
                     target_kv_usage: float) -> int:
    """0 with no request at all (Serve keeps min_replicas and waits out the delays); KV use
    alone never keeps an idle replica (its prefix cache may hold blocks)."""
    if num_requests <= 0:
        return 0
    by_requests = num_requests / target_requests
    by_kv = sum(kv_usages) / target_kv_usage
    return max(1, math.ceil(max(by_requests, by_kv) - 1e-9))


def engine_load_policy(ctx: Any, target_kv_usage: float = 0.8) -> tuple[int, dict]:
    if ctx.current_num_replicas == 0:  # scale from zero: Serve's own cold-start rule
        return ctx.target_num_replicas, {}
    metrics = ctx.aggregated_metrics or {}
    kv = list((metrics.get("kv_usage") or {}).values())
    target = ctx.config.get_target_ongoing_requests()
    return desired_replicas(ctx.total_num_requests, kv, target, target_kv_usage), {}
