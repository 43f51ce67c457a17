"""FileVault: the bytes of uploaded and produced files, owner-only on disk, sealed when keyed.

One file per id under one directory: the directory is created (or tightened) to 0700, each
file written 0600 through a temporary name and an atomic rename, so a crash never leaves half
a file under a live id. With a data key (gateway.crypto) the bytes are AES-GCM sealed, bound
to the file id. Ids are generated here and checked against a strict pattern before they touch
a path. Imports the stdlib and gateway.crypto.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from cormorant.gateway.crypto import DataCipher

FILE_ID = re.compile(r"^file-[A-Za-z0-9_-]{1,64}$")


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


class FileVault:
    def __init__(self, directory: str | Path | None, cipher: DataCipher | None = None) -> None:
        """directory None: a fresh private temporary directory (an embedded app's)."""
        self._temporary = directory is None
        self._dir = None if directory is None else Path(directory).expanduser()
        self._ready = False
        self.cipher = cipher or DataCipher()

    @property
    def dir(self) -> Path:
        """The directory, made (or tightened to) 0700 on first use."""
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="cormorant-files-"))
        if not self._ready:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self._dir, 0o700)
            self._ready = True
        return self._dir

    def _path(self, file_id: str) -> Path:
        if not FILE_ID.match(file_id):
            raise KeyError(file_id)
        return self.dir / file_id

    def write(self, file_id: str, data: bytes) -> None:
        path = self._path(file_id)
        blob = self.cipher.seal(data, aad=file_id)
        tmp = path.with_name(f".{file_id}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def read(self, file_id: str) -> bytes:
        """The file's plaintext; KeyError if absent, gateway.crypto.DataKeyError if sealed
        under another key."""
        try:
            blob = self._path(file_id).read_bytes()
        except FileNotFoundError:
            raise KeyError(file_id) from None
        return self.cipher.open_(blob, aad=file_id)

    def delete(self, file_id: str) -> None:
        self._path(file_id).unlink(missing_ok=True)

    def close(self) -> None:
        """A temporary directory (no directory was given) goes with its app."""
        if self._temporary and self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
