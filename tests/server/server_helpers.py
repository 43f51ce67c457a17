"""Helpers for the server tests: real engines behind the real app, served by uvicorn on a
loopback socket in a thread, and the assertion every error response must pass."""
from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from cormorant.config import CacheConfig, EngineConfig, SchedulerConfig
from cormorant.server.app import build_app
from cormorant.server.config import ServerConfig
from cormorant.server.launch import uvicorn_config

TINY_MAX_MODEL_LEN = 512
TINY_NUM_BLOCKS = 2048


def tiny_engine_config(model: str, **scheduler) -> EngineConfig:
    sched = dataclasses.replace(SchedulerConfig(max_model_len=TINY_MAX_MODEL_LEN), **scheduler)
    return EngineConfig(model=model, seed=0, cache=CacheConfig(num_blocks=TINY_NUM_BLOCKS),
                        scheduler=sched)


def start_engine(config: EngineConfig):
    from cormorant.frontend.async_llm import AsyncLLM

    return AsyncLLM.from_config(config)


@contextlib.contextmanager
def running_engine(config: EngineConfig | str, **scheduler):
    """A started engine, shut down on exit; a model path gets `tiny_engine_config`."""
    llm = start_engine(tiny_engine_config(config, **scheduler) if isinstance(config, str)
                       else config)
    try:
        yield llm
    finally:
        llm.shutdown()


@contextlib.contextmanager
def running_model_server(model: str, max_model_len: int, timeout: float = 300.0):
    """A real checkpoint (e.g. SmolLM2) behind a started ServerThread, both stopped on exit."""
    config = EngineConfig(model=model, seed=0,
                          scheduler=SchedulerConfig(max_model_len=max_model_len))
    with running_engine(config) as llm, running_server(llm, timeout=timeout) as server:
        yield server


def tiny_engine_fixture(name: str, scope: str = "module"):
    """A pytest fixture called `name`: an engine on the tiny Llama, shut down after `scope`."""
    @pytest.fixture(scope=scope, name=name)
    def fixture(tiny_llama):
        with running_engine(tiny_llama) as llm:
            yield llm
    return fixture


@contextlib.contextmanager
def running_server(engine, timeout: float = 60.0, **config):
    """A started `ServerThread(engine, **config)`, stopped on exit."""
    server = ServerThread(engine, **config).start(timeout=timeout)
    try:
        yield server
    finally:
        server.stop()


class ServerThread:
    """uvicorn serving `build_app(...)` on 127.0.0.1:<free port>, in a thread."""

    def __init__(self, engine, registry=None, loaded=None, loader=None, encoders=(),
                 **config) -> None:
        """engine (+ encoders beside it); or registry (+ loaded, loader): a multi-model app."""
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))  # our socket: no race for a "free" port
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.engine = engine
        self.server_config = ServerConfig(port=self.port, **config)
        self.app = build_app(engine, self.server_config, encoders, registry=registry,
                             loaded=loaded, loader=loader)
        self.server = uvicorn.Server(uvicorn_config(self.app, self.server_config, "warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True, name=f"uvicorn-{self.port}")

    @property
    def model(self) -> str:
        return self.app.state.cormorant.default_model

    def start(self, timeout: float = 60.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.sock.close()

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=kwargs.pop("api_key", "unused"),
                             max_retries=0, timeout=kwargs.pop("timeout", 60), **kwargs)

    def async_client(self, **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1",
                                  api_key=kwargs.pop("api_key", "unused"), max_retries=0,
                                  timeout=kwargs.pop("timeout", 60), **kwargs)


def assert_openai_error(response: httpx.Response, status: int, param: str | None = "any"
                        ) -> dict:
    """The exact OpenAI error shape, the expected status, a bounded message, no internals."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and 0 < len(error["message"]) <= 512
    assert isinstance(error["type"], str)
    assert "Traceback" not in error["message"] and " object at 0x" not in error["message"]
    if param != "any":
        assert error["param"] == param, error
    return error
