"""The images' install and start steps, run for real in a clean virtualenv: `install.sh` (the very
script both Dockerfiles run) installs cormorant and the default model, then the image's
ENTRYPOINT starts, answers /health and a chat completion, and drains on SIGTERM."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import yaml

from support import wait_http_ready

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-deploy-test-0123456789abcdef0123456789"


def test_install_script_and_entrypoint_in_a_clean_virtualenv(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHON=str(python), PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}")
    # torch 2.13.0 is the CPU build on this machine kind (the CPU image takes it from PyTorch's
    # CPU index instead, through TORCH_INDEX).
    subprocess.run(["sh", str(ROOT / "deploy/docker/install.sh"), str(ROOT)], env=env,
                   check=True, timeout=1200, cwd=tmp_path)
    # Nothing of the source tree is on the path: this is the installed package.
    where = subprocess.run([str(python), "-c", "import cormorant; print(cormorant.__file__)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert str(env_dir) in where.stdout, where.stdout

    dockerfile = (ROOT / "deploy/docker/Dockerfile").read_text()
    argv = yaml.safe_load(re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.M).group(1))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [str(env_dir / "bin" / argv[0]), *argv[1:], "--port", str(port),
            "--usage-db", str(tmp_path / "usage.db"), "--max-model-len", "512"]
    proc = subprocess.Popen(argv, env={**env, "CORMORANT_API_KEY": KEY}, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http_ready(url, proc, timeout=300, interval=0.5)
        assert httpx.get(url + "/health", timeout=10).status_code == 200
        body = {"model": "SmolLM2-135M-Instruct", "temperature": 0, "max_tokens": 8,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        assert httpx.post(url + "/v1/chat/completions", json=body, timeout=60).status_code == 401
        reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=60,
                           headers={"Authorization": f"Bearer {KEY}"})
        assert reply.status_code == 200, reply.text
        assert "Paris" in reply.json()["choices"][0]["message"]["content"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, proc.stderr.read()[-2000:]
