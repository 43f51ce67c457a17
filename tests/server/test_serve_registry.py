"""`cormorant serve --models FILE` as a real process: a TOML registry with the embedded
SmolLM2 and a tiny model loaded on demand, the models CLI swapping an alias, SIGTERM; and
registry files that must fail in milliseconds with exit 2."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import httpx

from support import wait_http_ready
from test_server_drain import ROOT, _free_port

ENV = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}

REGISTRY = """
[server]
roots = ["models"]

[[models]]
name = "smollm2"
version = "1"
source = "builtin:smollm2"
dtype = "float32"
engine = {{ max_model_len = 1024, num_kv_blocks = 128 }}

[[models]]
name = "tiny"
version = "1"
source = "tiny-llama"
dtype = "float32"
load = "on_demand"
engine = {{ max_model_len = 256, num_kv_blocks = 64 }}

[aliases]
chat = "smollm2@1"
"""


def _serve(*args: str) -> list[str]:
    return [sys.executable, "-m", "cormorant", "--log-level", "warning", "serve", *args]


def test_serve_a_registry_file(tmp_path, tiny_llama):
    shutil.copytree(tiny_llama, tmp_path / "models" / "tiny-llama")
    (tmp_path / "models.toml").write_text(REGISTRY.format())
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(_serve("--models", str(tmp_path / "models.toml"), "--port",
                                   str(port), "--usage-db", ":memory:"), cwd=ROOT, env=ENV)
    try:
        wait_http_ready(url, proc, timeout=120, probe_timeout=1)
        ids = {m["id"] for m in httpx.get(url + "/v1/models").json()["data"]}
        assert ids == {"smollm2@1", "tiny@1", "chat"}
        answer = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "model": "chat", "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]})
        assert "Paris" in answer.json()["choices"][0]["message"]["content"]
        assert answer.headers["x-model-version"] == "smollm2@1"
        swap = subprocess.run([sys.executable, "-m", "cormorant", "models", "--url", url,
                               "alias", "chat", "tiny@1"], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=120)
        assert swap.returncode == 0, swap.stderr
        after = httpx.post(url + "/v1/completions", timeout=60,
                           json={"model": "chat", "prompt": "hi", "max_tokens": 4})
        assert after.json()["model"] == "tiny@1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_registry_files_exit_2_before_loading(tmp_path):
    cases = {
        "traversal": '[[models]]\nname = "x"\nsource = "../../etc/passwd"\n',
        "unknown setting": '[[models]]\nname = "x"\nsource = "builtin:smollm2"\ncolour = 1\n',
        "bad alias": '[[models]]\nname = "x"\nsource = "builtin:smollm2"\n'
                     '[aliases]\nchat = "nobody@1"\n',
        "not toml": "[[models\n",
    }
    for name, text in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.toml"
        path.write_text(text)
        done = subprocess.run(_serve("--models", str(path), "--port", str(_free_port())),
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (name, done.stderr)
        assert done.stderr.startswith("cormorant serve: --models:"), (name, done.stderr)
        assert "Traceback" not in done.stderr
