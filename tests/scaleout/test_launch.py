"""`cormorant serve --ray`: its flags become ScaleoutOptions, and what Ray cannot serve yet is
refused before any Ray process starts."""
from __future__ import annotations

import subprocess
import sys

from cormorant.cli import build_parser
from cormorant.scaleout.launch import options_from


def test_the_scale_out_flags_become_the_options():
    args = build_parser().parse_args([
        "serve", "--ray", "--model", "m", "--device", "cuda", "--min-replicas", "0",
        "--max-replicas", "4", "--target-ongoing-requests", "3", "--cold-start-s", "45",
        "--ingress-replicas", "2"])
    options = options_from(args)
    assert args.ray and options.autoscaling
    assert (options.min_replicas, options.max_replicas) == (0, 4)
    assert options.num_gpus_per_replica == 1.0  # one replica per GPU on cuda
    assert (options.target_ongoing_requests, options.cold_start_s) == (3.0, 45)
    assert options.num_ingress_replicas == 2
    cpu = options_from(build_parser().parse_args(["serve", "--ray", "--device", "cpu",
                                                  "--replicas", "3"]))
    assert (cpu.num_gpus_per_replica, cpu.num_replicas, cpu.autoscaling) == (0.0, 3, False)


def test_a_registry_is_refused_before_ray_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cormorant", "serve", "--ray", "--models",
                           str(tmp_path / "models.toml")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--models" in proc.stderr
    assert "Ray" in proc.stderr and "Started a local Ray instance" not in proc.stderr
