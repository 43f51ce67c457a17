"""`cormorant serve --ray`: the same flags as `cormorant serve`, served by Ray Serve replicas.

`add_ray_args` adds the scale-out group to the serve parser (cormorant.cli wires it in);
`run_ray(args)` joins a Ray cluster (`--ray-address`, else a local one), starts Serve's HTTP
proxy on --host/--port, deploys scaleout.app's application (with --models, scaleout.registry_app's:
one engine application per model version) and waits for SIGINT or SIGTERM, then deletes the
applications (replicas drain their streams) and leaves the cluster. Each --embedding-model is
an encoder deployment beside the engines. What Ray cannot serve (a registry that scales to
zero) is refused before Ray starts.
Ray is imported only when --ray is given.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from cormorant.scaleout.options import ScaleoutOptions, model_name_of


def add_ray_args(parser: argparse.ArgumentParser) -> None:
    ray = parser.add_argument_group("scale-out on Ray Serve (needs the `ray` extra)")
    add = ray.add_argument
    add("--ray", action="store_true",
        help="serve through Ray Serve: engine replicas behind this HTTP surface")
    add("--ray-address", default=None, metavar="ADDR",
        help="join this Ray cluster (`ray start --head` prints it; 'auto': the local node's); "
             "default: start a Ray instance in this process")
    add("--ray-app-name", default="cormorant", help="the Serve application's name")
    add("--replicas", type=int, default=ScaleoutOptions.num_replicas,
        help="engine replicas (a fixed count, unless --min/--max-replicas are set)")
    add("--min-replicas", type=int, default=None,
        help="autoscale the replicas on engine load between --min-replicas (0: scale to "
             "zero) and --max-replicas")
    add("--max-replicas", type=int, default=None)
    add("--gpus-per-replica", type=float, default=None,
        help="GPUs per replica (default: 1 on --device cuda, else 0)")
    add("--cpus-per-replica", type=float, default=ScaleoutOptions.num_cpus_per_replica)
    add("--target-ongoing-requests", type=float,
        default=ScaleoutOptions.target_ongoing_requests,
        help="running + waiting requests per replica the autoscaler aims at")
    add("--upscale-delay-s", type=float, default=ScaleoutOptions.upscale_delay_s)
    add("--downscale-delay-s", type=float, default=ScaleoutOptions.downscale_delay_s)
    add("--downscale-to-zero-delay-s", type=float, default=None,
        help="with --min-replicas 0: idle seconds before the last replica stops")
    add("--cold-start-s", type=int, default=ScaleoutOptions.cold_start_s,
        help="with --min-replicas 0: the Retry-After of requests while no replica runs")
    add("--ingress-replicas", type=int, default=ScaleoutOptions.num_ingress_replicas,
        help="HTTP ingress replicas (share quotas and caches through --redis)")


def options_from(args: argparse.Namespace) -> ScaleoutOptions:
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if str(args.device).startswith("cuda") else 0.0
    return ScaleoutOptions(
        num_replicas=args.replicas, min_replicas=args.min_replicas,
        max_replicas=args.max_replicas, num_gpus_per_replica=gpus,
        num_cpus_per_replica=args.cpus_per_replica,
        target_ongoing_requests=args.target_ongoing_requests,
        upscale_delay_s=args.upscale_delay_s, downscale_delay_s=args.downscale_delay_s,
        downscale_to_zero_delay_s=args.downscale_to_zero_delay_s, cold_start_s=args.cold_start_s,
        num_ingress_replicas=args.ingress_replicas, **drain_option(args))


def drain_option(args: argparse.Namespace) -> dict[str, float]:
    """--drain-grace-s (the server's SIGTERM drain) is how long a stopping replica (deleted,
    or removed by down-scaling) and ingress keep serving their streams; unset: Ray's 120 s."""
    drain = getattr(args, "drain_grace_s", None)
    return {} if drain is None else {"graceful_shutdown_timeout_s": float(drain)}


def run_ray(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from cormorant.scaleout.model_apps import delete_model_apps
    from cormorant.server.launch import bind_error

    if error := bind_error(args.host, args.api_key or args.keys_db or args.keys_file,
                           args.insecure, args.api_key) or launch_error(args):
        print(f"cormorant serve: {error}", file=sys.stderr)
        return 2
    app, name = _application(args)
    ray.init(address=args.ray_address, include_dashboard=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name=args.ray_app_name, route_prefix="/")
        print(f"cormorant: serving {name} through Ray Serve at "
              f"http://{args.host}:{args.port}", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        serve.delete(args.ray_app_name)
        delete_model_apps(args.ray_app_name)
        ray.shutdown()
    return 0


def launch_error(args: argparse.Namespace) -> str | None:
    """What `serve --ray` cannot serve, found before any Ray process starts."""
    from cormorant.hosting.registry import RegistryError, load_registry_file
    from cormorant.scaleout.registry_app import registry_error

    if not args.models:
        return None
    try:
        return registry_error(load_registry_file(args.models), options_from(args))
    except RegistryError as exc:
        return f"--models: {exc}"


def _application(args: argparse.Namespace):
    """(the bound Serve application, what it serves) from the serve flags."""
    from cormorant.engine_args import engine_config_from
    from cormorant.hosting.loader import model_version, source_path
    from cormorant.scaleout.app import scaleout_app
    from cormorant.scaleout.registry_app import registry_app
    from cormorant.server.launch import encoder_specs, server_config

    if args.models:
        return (registry_app(args.models, server_config(args, ""), options_from(args),
                             args.scheduling), f"the models of {args.models}")
    model = args.model or str(source_path(None))
    engine = engine_config_from(args, "serve", model=model)
    name = args.served_model_name or model_name_of(model)
    encoders = [(str(Path(path).resolve()), alias or model_name_of(path))
                for path, alias in encoder_specs(args.embedding_model)]
    return scaleout_app(engine, name, server_config(args, model_version(model)),
                        options_from(args), encoders), name

