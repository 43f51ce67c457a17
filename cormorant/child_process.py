"""Start a cormorant module as a child Python process joined to this one by a socket pair.

`python -m MODULE --fd N --log-level L` (no multiprocessing: nothing pickled, no resource
tracker left behind); the child takes its end with `child_connection`. Used by the
engine process (frontend.engine_process) and the grammar process (text.xgrammar_process).
Imports only the standard library.
"""
from __future__ import annotations

import argparse
import logging
import socket
import subprocess
import sys
from multiprocessing.connection import Connection


def spawn(module: str) -> tuple[subprocess.Popen, Connection]:
    """The child running `module` and our end of its socket pair."""
    ours, theirs = socket.socketpair()
    level = logging.getLogger().getEffectiveLevel()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--fd", str(theirs.fileno()),
             "--log-level", str(level)],
            pass_fds=(theirs.fileno(),))
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, Connection(ours.detach())


def child_connection(argv: list[str] | None, tag: str, description: str) -> Connection:
    """In the child: parse `--fd` / `--log-level`, set up logging (lines tagged [tag]), and
    return its end of the socket pair."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--log-level", type=int, default=logging.WARNING)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format=f"%(asctime)s %(levelname)s %(name)s [{tag}]: %(message)s")
    return Connection(args.fd)
