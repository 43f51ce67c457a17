"""The Ray Serve application: engine replicas behind one cormorant ingress.

`build_app(args)` is the entry point of a Serve config file or `serve run`
(`serve run cormorant.scaleout.app:build_app model=/models/x replicas=2`); `cormorant serve
--ray` builds the same application from its flags (scaleout.launch). Its deployments:
`cormorant-engine` (scaleout.replica.EngineReplica, routed by scaleout.router, scaled by
scaleout.autoscale when min/max replicas are given), one `cormorant-encoder-<name>` per
--embedding-model (scaleout.encoder) and `cormorant-ingress`, whose ASGI app is
server.app.build_app over a scaleout.client.RayEngineClient: keys, quotas, caches, metrics
and the admin API stay in the ingress, generation goes to the replicas.
Only plain data crosses into Serve: the EngineConfig as engine.messages msgpack bytes, the
ServerConfig as a dict of its fields.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ray import serve
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy, RequestRouterConfig
from starlette.middleware import Middleware

from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
from cormorant.engine.messages import decode, encode
from cormorant.scaleout.client import RayEngineClient
from cormorant.scaleout.coldstart import ColdStart, ColdStartMiddleware
from cormorant.scaleout.encoder import (ENCODER_DEPLOYMENT, EncoderReplica, RayEncoderClient,
                                        encoder_deployment_options)
from cormorant.scaleout.metrics import install_replica_metrics
from cormorant.scaleout.options import ScaleoutOptions, model_name_of
from cormorant.scaleout.replica import EngineReplica
from cormorant.scaleout.served_by import install_served_by
from cormorant.server.app import build_app as build_server_app
from cormorant.server.config import ServerConfig

ENGINE_DEPLOYMENT = "cormorant-engine"
INGRESS_DEPLOYMENT = "cormorant-ingress"
POLICY = "cormorant.scaleout.autoscale:engine_load_policy"


def engine_deployment_options(options: ScaleoutOptions) -> dict[str, Any]:
    opts: dict[str, Any] = dict(
        name=ENGINE_DEPLOYMENT,
        ray_actor_options={"num_gpus": options.num_gpus_per_replica,
                           "num_cpus": options.num_cpus_per_replica},
        max_ongoing_requests=options.max_ongoing_requests,
        max_replicas_per_node=options.max_replicas_per_node,
        graceful_shutdown_timeout_s=options.graceful_shutdown_timeout_s,
        graceful_shutdown_wait_loop_s=0.5,
        health_check_period_s=options.health_check_period_s,
        request_router_config=RequestRouterConfig(
            request_router_class=options.request_router,
            request_router_kwargs={"load_epsilon": options.load_epsilon,
                                   "load_slack": options.load_slack},
            request_routing_stats_period_s=options.routing_stats_period_s))
    if options.autoscaling:
        low = options.min_replicas if options.min_replicas is not None else 1
        high = options.max_replicas if options.max_replicas is not None else max(low, 1)
        opts["autoscaling_config"] = AutoscalingConfig(
            min_replicas=low, max_replicas=high, initial_replicas=max(low, 1),
            target_ongoing_requests=options.target_ongoing_requests,
            upscale_delay_s=options.upscale_delay_s,
            downscale_delay_s=options.downscale_delay_s,
            downscale_to_zero_delay_s=options.downscale_to_zero_delay_s,
            metrics_interval_s=options.metrics_interval_s,
            look_back_period_s=max(2 * options.metrics_interval_s, 2.0),
            policy=AutoscalingPolicy(policy_function=POLICY,
                                     policy_kwargs={"target_kv_usage": options.target_kv_usage}))
    else:
        opts["num_replicas"] = options.num_replicas
    return opts


def ingress_deployment_options(options: ScaleoutOptions) -> dict[str, Any]:
    """The ingress drains its streams as long as the engines do (its streams are theirs);
    Serve's default of 5 ongoing requests per replica would queue streams at the proxy."""
    return dict(num_replicas=options.num_ingress_replicas,
                max_ongoing_requests=options.max_ongoing_requests_per_ingress,
                ray_actor_options={"num_cpus": options.num_cpus_per_ingress},
                graceful_shutdown_timeout_s=options.graceful_shutdown_timeout_s)


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress()
class Ingress:
    """The cormorant HTTP surface, its engine a RayEngineClient over the engine deployment."""

    def __init__(self, engine: Any, engine_config: bytes, model_name: str,
                 server_config: dict[str, Any], max_attempts: int,
                 cold_start_s: int | None = None,
                 encoders: list[tuple[Any, str, str]] = ()) -> None:
        """cold_start_s: set when the engines may scale to zero (the Retry-After then);
        encoders: (handle, path, name) of each encoder deployment (--embedding-model)."""
        config = decode(engine_config)
        self.engine = engine
        self.client = RayEngineClient(engine, config, model_name, max_attempts)
        self.encoders = [RayEncoderClient(h, path, name) for h, path, name in encoders]
        self.server_config = ServerConfig(**server_config)
        self.cold_start_s = cold_start_s

    def __serve_build_asgi_app__(self):
        app = build_server_app(self.client, self.server_config, self.encoders)
        install_replica_metrics(app, lambda: [self.client])
        install_served_by(app)
        if self.cold_start_s is not None:  # innermost: after auth, before admission
            app_name = serve.get_replica_context().app_name
            cold = ColdStart(lambda: running_engine_replicas(app_name),
                             lambda: self.engine.stats.remote(), self.cold_start_s)
            app.user_middleware.append(Middleware(ColdStartMiddleware, cold=cold))
        return app


def running_engine_replicas(app_name: str) -> int:
    app = serve.status().applications.get(app_name)
    deployment = app.deployments.get(ENGINE_DEPLOYMENT) if app is not None else None
    return deployment.replica_states.get("RUNNING", 0) if deployment is not None else 0


def scaleout_app(engine_config: EngineConfig, model_name: str, server_config: ServerConfig,
                 options: ScaleoutOptions, encoders: list[tuple[str, str]] = ()):
    """The bound Serve application: `serve.run(scaleout_app(...))`. encoders: (path, name)
    of each --embedding-model, a deployment each (`cormorant-encoder-<name>`)."""
    config_bytes = encode(engine_config)
    engine = serve.deployment(EngineReplica).options(
        **engine_deployment_options(options)).bind(config_bytes, model_name)
    fields = {f.name: getattr(server_config, f.name) for f in dataclasses.fields(ServerConfig)}
    ingress = Ingress.options(**ingress_deployment_options(options))
    cold_start_s = options.cold_start_s if options.min_replicas == 0 else None
    device = "cuda" if engine_config.device.startswith("cuda") else engine_config.device
    bound = [(serve.deployment(EncoderReplica).options(**encoder_deployment_options(
        options, f"{ENCODER_DEPLOYMENT}-{name}")).bind(path, name, "auto", device), path, name)
        for path, name in encoders]
    return ingress.bind(engine, config_bytes, model_name, fields, options.max_attempts,
                        cold_start_s, bound)


# build_app's keys that become ServerConfig fields: the state a RayService's ingress replicas
# (and pods) share (quotas and the response cache in Redis, usage and batches in PostgreSQL
# and files_dir on a shared volume) and the quota defaults each applies alike.
SERVER_KEYS = {"api_key": "api_key", "keys_file": "keys_file", "redis": "redis_url",
               "usage_db": "usage_db", "files_dir": "files_dir",
               "response_cache_redis": "response_cache_redis_url"}
SERVER_INTS = {"default_rpm", "default_tpm", "default_max_concurrent"}


def build_app(args: dict[str, str]):
    """`serve run cormorant.scaleout.app:build_app model=PATH [name=..] [replicas=N]
    [min_replicas=..] [max_replicas=..] [num_gpus=..] [device=..] [max_model_len=..]
    [num_kv_blocks=..] [keys_file=..] [redis=URL] [usage_db=..] [ingress_replicas=..]
    [scheduling=fair|fifo] [response_cache=on|off] [response_cache_redis=URL]
    [response_cache_ttl_s=..] [files_dir=..] [default_rpm=..] [default_tpm=..]
    [default_max_concurrent=..] [drain_grace_s=..]`, or the same keys under a Serve config
    file's `args:` (values are strings). `models=FILE` instead of model=PATH serves a model
    registry (scaleout.registry_app), each version on replicas of its own; the engine
    settings then come from the file."""
    known = {"model", "models", "name", "replicas", "min_replicas", "max_replicas",
             "num_gpus", "num_cpus", "device", "max_model_len", "num_kv_blocks",
             "ingress_replicas", "scheduling", "response_cache", "response_cache_ttl_s",
             "drain_grace_s", *SERVER_KEYS, *SERVER_INTS}
    unknown = set(args) - known
    if unknown or ("model" in args) == ("models" in args):
        raise ValueError(f"build_app needs model=PATH or models=FILE; unknown arguments: "
                         f"{sorted(unknown)}; known: {sorted(known)}")
    if args.get("scheduling", "fair") not in ("fair", "fifo"):
        raise ValueError("scheduling must be fair or fifo (the waiting queue's order)")
    if "models" in args and (per_model := {"name", "device", "max_model_len",
                                           "num_kv_blocks"} & set(args)):
        raise ValueError(f"with models=FILE, {sorted(per_model)} are each model's settings "
                         "in the registry file")
    options = ScaleoutOptions(
        num_replicas=_int(args, "replicas") or 2, min_replicas=_int(args, "min_replicas"),
        max_replicas=_int(args, "max_replicas"),
        num_gpus_per_replica=float(args.get("num_gpus", 0)),
        num_cpus_per_replica=float(args.get("num_cpus", 1)),
        num_ingress_replicas=_int(args, "ingress_replicas") or 1,
        **({"graceful_shutdown_timeout_s": float(args["drain_grace_s"])}
           if args.get("drain_grace_s") else {}))
    server_config = server_config_from(args)
    if "models" in args:
        from cormorant.scaleout.registry_app import registry_app  # it imports this module

        return registry_app(args["models"], server_config, options,
                            args.get("scheduling", "fair"))
    engine_config = EngineConfig(
        model=args["model"], device=args.get("device", "auto"),
        cache=CacheConfig(num_blocks=_int(args, "num_kv_blocks")),
        scheduler=SchedulerConfig(max_model_len=_int(args, "max_model_len"),
                                  policy=args.get("scheduling", "fair")))
    name = args.get("name") or model_name_of(args["model"])
    return scaleout_app(engine_config, name, server_config, options)


def server_config_from(args: dict[str, str]) -> ServerConfig:
    """build_app's server keys as a ServerConfig. The response cache is on unless
    response_cache=off, as with `cormorant serve` (--no-response-cache)."""
    cache = args.get("response_cache", "on")
    if cache not in ("on", "off"):
        raise ValueError("response_cache must be on or off")
    if cache == "off" and "response_cache_redis" in args:
        raise ValueError("response_cache_redis needs the response cache (response_cache=on)")
    fields: dict[str, Any] = {f: args[k] for k, f in SERVER_KEYS.items() if args.get(k)}
    fields.update({k: _int(args, k) for k in SERVER_INTS})
    if args.get("response_cache_ttl_s"):
        fields["response_cache_ttl_s"] = float(args["response_cache_ttl_s"])
    return ServerConfig(response_cache=cache == "on", **fields)


def _int(args: dict[str, str], key: str) -> int | None:
    return int(args[key]) if args.get(key) not in (None, "") else None

