"""A tensor-parallel worker: one rank's shard of the model, its KV cache and sampler.

`python -m cormorant.runner.tp_worker --fd F --rank R --world-size N --store-port P`, started
by runner.tp_executor (a fresh interpreter, as frontend.engine_process starts the engine: no
fork of a process that holds torch state, no pickled bootstrap). It joins the group through
the executor's TCPStore (gloo on the CPU, NCCL on CUDA, every collective under a timeout),
loads its shard (the layers split themselves by rank: layers.linear, layers.embedding; random
weights are drawn whole and sharded, models.random_init), and builds a plain ModelRunner over
a rank-local ModelConfig (its own query and kv heads), whose KV cache every rank sizes from
its own free memory and then agrees on the smallest block count (layers.parallel.min_over_ranks).

Then it runs what the executor sends (runner.tp_wire, msgpack): each LAUNCH is the same
ScheduledBatch on every rank, so every rank runs the same forward, collectives in the same
order. Sampling: every rank samples, identically, and only rank 0's ids go back. The logits
are identical bit for bit on every rank (the LM head's all-gather copies them), and so are
the sampler's generators (seeded from the same EngineConfig.seed and request seeds, advanced
by the same batches), so the ids agree; this keeps each rank's own copy of the sampled ids
on its device, which async scheduling's placeholders read (runner.model_runner), with no
broadcast of ids back to the ranks on the critical path.

The worker exits on SHUTDOWN, when the executor's socket closes, when its parent process is
gone (a watcher thread: a rank stuck in a collective cannot read its socket), or after an
error, which it reports (ERROR) first. Imports torch, config, this package, models, layers.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import sys
import threading
import time
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from cormorant.config import EngineConfig, ModelConfig
from cormorant.layers.attention import AttentionBackend, TorchAttention
from cormorant.layers.parallel import init_tensor_parallel, kv_head_shard
from cormorant.models.loader import load_model, resolve_device, resolve_dtype
from cormorant.models.random_init import default_attention_backend
from cormorant.runner.cpu_threads import configure_threads, usable_cpus
from cormorant.runner.model_runner import ModelRunner
from cormorant.runner.tp_wire import (ERROR, LAUNCH, READY, SAMPLE, SHUTDOWN, batch_from,
                                      config_from, outputs_message, pack, unpack)

log = logging.getLogger(__name__)
# Bounds every collective: a rank whose peer hangs raises instead of waiting forever.
COLLECTIVE_TIMEOUT_S = 120.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--fd", "--rank", "--world-size", "--store-port", "--parent-pid"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s "
                        f"[tp{args.rank}]: %(message)s")
    _exit_with_parent(args.parent_pid)
    conn = Connection(args.fd)
    try:
        _, config_data, eos_token_ids = unpack(conn.recv_bytes())
        start = time.perf_counter()
        runner = build_worker_runner(config_from(config_data), tuple(eos_token_ids),
                                     args.rank, args.world_size, args.store_port)
        log.info("rank %d ready in %.1f s", args.rank, time.perf_counter() - start)
        conn.send_bytes(pack(READY, runner.num_blocks, runner.memory_bytes))
        _serve(conn, runner, args.rank)
        conn.close()
        logging.shutdown()
        os._exit(0)  # nothing left to clean up: skip the interpreter's slow teardown
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the executor went away: nobody is left to tell
    except BaseException as exc:  # report, then die: the executor fails the engine
        log.exception("tensor-parallel worker %d failed", args.rank)
        try:
            conn.send_bytes(pack(ERROR, f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        return 1
    finally:
        conn.close()
    return 0


def build_worker_runner(config: EngineConfig, eos_token_ids: tuple[int, ...], rank: int,
                        world_size: int, store_port: int) -> ModelRunner:
    """Join the group, load this rank's shard and build its runner."""
    device = worker_device(config.device, rank)
    backend = "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    store = dist.TCPStore("127.0.0.1", store_port, world_size + 1, is_master=False,
                          timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    init_tensor_parallel(rank, world_size, store, backend, COLLECTIVE_TIMEOUT_S)
    log.info("rank %d joined the %s group", rank, backend)
    torch.manual_seed(config.seed)
    dtype = resolve_dtype(config.dtype, config.model, device)
    if device.type == "cpu":  # the ranks share the cores
        configure_threads(config.threads or max(1, usable_cpus() // world_size))
    model, model_config = load_model(config.model, dtype, device,
                                     _attention_backend(config.attention_backend, device),
                                     load_format=config.load_format, seed=config.seed or 0,
                                     quantization=config.quantization)
    return ModelRunner(config, rank_model_config(model_config, rank, world_size), model,
                       device, dtype, eos_token_ids)


def worker_device(device: str, rank: int) -> torch.device:
    """CUDA: the rank-th device from the configured one on (cuda:K -> cuda:K+rank); else
    the CPU, shared by every rank."""
    resolved = resolve_device(device)
    if resolved.type != "cuda":
        return resolved
    return torch.device("cuda", (resolved.index or 0) + rank)


def rank_model_config(model_config: ModelConfig, rank: int, world_size: int) -> ModelConfig:
    """The heads this rank holds: what its KV cache and profile run are shaped by."""
    return dataclasses.replace(
        model_config, num_heads=model_config.num_heads // world_size,
        num_kv_heads=kv_head_shard(model_config.num_kv_heads, rank, world_size)[1])


def _attention_backend(name: str, device: torch.device) -> AttentionBackend:
    if name == "torch" or device.type != "cuda":
        return TorchAttention()
    if name == "triton":
        from cormorant.layers.triton_attention import TritonAttention
        return TritonAttention()
    return default_attention_backend(device)


def _serve(conn: Connection, runner: ModelRunner, rank: int) -> None:
    """Run each step the executor sends, rank 0 answering its outputs; until SHUTDOWN."""
    handle = None
    while True:
        message = unpack(conn.recv_bytes())
        kind = message[0]
        if kind == SHUTDOWN:
            return
        if kind == LAUNCH:
            _, batch, defer_sampling = message
            handle = runner.launch(batch_from(batch), defer_sampling=defer_sampling)
            if defer_sampling:
                continue  # SAMPLE follows, with the grammar masks
        elif kind == SAMPLE:
            runner.sample(handle, message[1], message[2])
        else:
            raise ValueError(f"unknown message {kind!r}")
        outputs = runner.collect(handle)
        if rank == 0:
            conn.send_bytes(outputs_message(outputs))


def _exit_with_parent(parent_pid: int) -> None:
    """Exit as soon as the executor's process is gone, even while blocked in a collective."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
