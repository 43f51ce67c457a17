"""A real PostgreSQL server for the gateway tests, started on a free loopback port.

`postgres_server` (session scope) runs `initdb` into a fresh temporary folder and `postgres -D
dir -p PORT -k dir -h 127.0.0.1` from the Debian package (installed by scripts/setup.sh
--test; Debian keeps the binaries in /usr/lib/postgresql/<version>/bin, off PATH), as the
`postgres` system user when the tests run as root (the server refuses root), and stops it at
teardown by its PID. The tests that need it are skipped, saying why, only when the binaries
(or psycopg) are absent. `postgres_url` gives each test a database of its own.
Import the fixtures into a test module: `from postgres_fixture import postgres_server, ...`.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from redis_fixture import free_port

SUPERUSER = "postgres"  # the database role initdb creates (trust auth on loopback only)


@dataclass
class PostgresServer:
    port: int
    datadir: Path
    process: subprocess.Popen

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"


def find_bin_dir() -> Path | None:
    """The folder holding initdb and postgres: PATH first, else the newest Debian version."""
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).parent / "postgres").exists():
        return Path(initdb).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in p.split("/")[4].split(".")])
    for initdb in reversed(found):
        if (Path(initdb).parent / "postgres").exists():
            return Path(initdb).parent
    return None


def _run_as() -> dict:
    """Popen arguments that drop root to the `postgres` system user (the server refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` system user to run the server")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _wait_ready(server: PostgresServer, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"postgres exited with code {server.process.returncode}")
        try:
            with psycopg.connect(server.url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not accept connections") from None
            time.sleep(0.1)


def start_postgres() -> PostgresServer:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) are not installed "
                    "(apt-get install postgresql; scripts/setup.sh --test does it)")
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install -e '.[test]')")
    as_user = _run_as()
    # Under /tmp, not pytest's tmp_path: root's pytest folders are 0700, closed to `postgres`.
    root = Path(tempfile.mkdtemp(prefix="cormorant-pg-"))
    datadir = root / "data"
    datadir.mkdir()
    if as_user:
        for path in (root, datadir):
            os.chown(path, as_user["user"], as_user["group"])
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    subprocess.run([str(bin_dir / "initdb"), "-D", str(datadir), "-U", SUPERUSER, "-A", "trust",
                    "-E", "UTF8", "--no-sync", "--no-instructions"],
                   check=True, cwd=root, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, **as_user)
    # A port taken between free_port() and the bind makes postgres exit: try a few.
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(datadir), "-p", str(port), "-k", str(root),
             "-h", "127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off"],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **as_user)
        server = PostgresServer(port, datadir, process)
        try:
            _wait_ready(server)
            return server
        except RuntimeError:
            stop_postgres(server, remove=False)
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError("could not start postgres")


def stop_postgres(server: PostgresServer, remove: bool = True) -> None:
    """SIGINT to the postmaster's PID (our Popen child): a fast shutdown."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    if remove:
        shutil.rmtree(server.datadir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    server = start_postgres()
    yield server
    stop_postgres(server)


def create_database(server: PostgresServer) -> str:
    """A new empty database; its URL."""
    import psycopg

    name = f"usage_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The URL of a database of this test's own."""
    return create_database(postgres_server)
