"""The engine core in its own process, so the engine and the HTTP side never wait on one GIL.

The serving process keeps HTTP, tokenization and detokenization; the engine process only
schedules and runs steps.

The child is a plain `python -m cormorant.frontend.engine_process` (no multiprocessing: no
pickled bootstrap, no resource-tracker process left behind) joined to the parent by a socket
pair carrying engine.messages (msgpack). The parent sends the EngineConfig first; the child
builds its engine from it alone (frontend.builder.build_engine), warms it up, answers
EngineReady, then applies commands and sends StepOutputs after each step with news (and at
least every HEARTBEAT_S, so liveness is visible), or EngineFailed before it dies. It exits on
Shutdown, or when the parent's end of the socket closes.
Imports config, engine.messages and frontend.builder (in the child).
"""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from cormorant.child_process import child_connection, spawn
from cormorant.config import EngineConfig
from cormorant.engine.messages import (EngineFailed, EngineReady, Shutdown, StepOutputs,
                                       apply_command, decode, encode)

log = logging.getLogger(__name__)
HEARTBEAT_S = 1.0


# --- the child ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    conn = child_connection(argv, "engine", __doc__.splitlines()[0])
    built = None
    try:
        config = decode(conn.recv_bytes())
        from cormorant.frontend.builder import build_engine

        built = build_engine(config)
        built.core.warm_up()
        conn.send_bytes(encode(EngineReady(built.config, built.model_config,
                                           built.runner.memory_bytes, built.worker_pids)))
        _serve(conn, built.core, built.check_alive)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent went away: nobody is left to tell
    except BaseException as exc:  # report, then die: the parent fails its streams
        log.exception("engine process failed")
        try:
            conn.send_bytes(encode(EngineFailed(f"{type(exc).__name__}: {exc}")))
        except OSError:
            pass
        return 1
    finally:
        if built is not None:
            built.close()  # tensor-parallel workers
        conn.close()
    return 0


def _serve(conn: Connection, core, check_alive: Callable[[], None]) -> None:
    """Apply what arrived, step, report; until Shutdown (or EOF from the parent).
    check_alive raises when the engine's workers (tensor parallel) died."""
    last_sent = 0.0
    while True:
        check_alive()
        outputs = []
        if conn.poll(0 if core.has_unfinished_requests() else HEARTBEAT_S / 2):
            while True:
                command = decode(conn.recv_bytes())
                if isinstance(command, Shutdown):
                    return
                outputs += apply_command(core, command)
                if not conn.poll(0):
                    break
        outputs += core.step()
        now = time.monotonic()
        if outputs or now - last_sent >= HEARTBEAT_S:
            conn.send_bytes(encode(StepOutputs(outputs, core.stats(now))))
            last_sent = now


# --- the parent's handle -------------------------------------------------------------------------
class EngineProcess:
    """Start the engine process for `config`, send it commands, and hand every message it
    sends (StepOutputs, EngineFailed) to `on_message` from a reader thread (`start`)."""

    def __init__(self, config: EngineConfig, start_timeout_s: float = 600.0) -> None:
        self.process, self._conn = spawn("cormorant.frontend.engine_process")
        self._send_lock = threading.Lock()
        self._closing = False
        self.is_alive = True
        try:
            self._conn.send_bytes(encode(config))
            self.info: EngineReady = self._wait_ready(start_timeout_s)
        except BaseException:
            self._stop(kill=True)
            raise

    def _wait_ready(self, timeout_s: float) -> EngineReady:
        if not self._conn.poll(timeout_s):
            raise RuntimeError(f"the engine process did not start within {timeout_s:.0f} s")
        try:
            message = decode(self._conn.recv_bytes())
        except EOFError:
            raise RuntimeError("the engine process exited while starting") from None
        if not isinstance(message, EngineReady):
            raise RuntimeError(f"the engine process failed to start: {message.message}")
        return message

    def start(self, on_message: Callable[[Any], None]) -> None:
        self._on_message = on_message
        self._reader = threading.Thread(target=self._read, name="cormorant-engine-reader",
                                        daemon=True)
        self._reader.start()

    def send(self, message: Any) -> None:
        data = encode(message)
        with self._send_lock:
            try:
                self._conn.send_bytes(data)
            except (OSError, ValueError):
                self.is_alive = False

    def _read(self) -> None:
        try:
            while True:
                self._on_message(decode(self._conn.recv_bytes()))
        except (EOFError, OSError) as exc:
            if not self._closing:
                log.error("the engine process went away: %s", exc)
        finally:
            self.is_alive = False
            self._on_message(EngineFailed("the engine process exited"))

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Ask the engine to stop, wait for it (kill it after `timeout_s`), reap it."""
        if self._closing:
            return
        self._closing = True
        self.send(Shutdown())
        self._stop(kill=False, timeout_s=timeout_s)

    def _stop(self, kill: bool, timeout_s: float = 10.0) -> None:
        self._closing = True
        if not kill:
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("the engine process did not stop within %.0f s; killing it",
                            timeout_s)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.is_alive = False
        self._conn.close()


if __name__ == "__main__":
    sys.exit(main())
