"""Encryption at rest: AES-GCM under the operator's data key (CORMORANT_DATA_KEY), or none.

`DataCipher.from_env()` reads the key (base64 of 32 bytes) from the environment; without one,
`seal`/`open_` pass bytes through unchanged, so the files directory, the batch database and
the response cache hold plaintext (still owner-only). A sealed blob is `MAGIC + nonce(12) +
ciphertext+tag`, with the caller's `aad` (a file id, a cache key) bound into the tag, so a
blob moved to another record does not decrypt. Opening a sealed blob without the key, with the
wrong key or after tampering raises `DataKeyError` with a message an operator can act on.
Imports the stdlib and `cryptography` (AES-GCM).
"""
from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

DATA_KEY_ENV = "CORMORANT_DATA_KEY"
MAGIC = b"CRM1\x00"  # sealed blobs start with this; plaintext JSON/JSONL never does
NONCE_BYTES = 12


class DataKeyError(ValueError):
    """A data key that is malformed, missing for sealed data, or not the one data was sealed
    with."""


def parse_data_key(text: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise DataKeyError(f"{DATA_KEY_ENV} must be base64 of 32 random bytes "
                           "(e.g. `head -c32 /dev/urandom | base64`)") from None
    if len(key) != 32:
        raise DataKeyError(f"{DATA_KEY_ENV} must decode to 32 bytes (AES-256), "
                           f"not {len(key)}")
    return key


class DataCipher:
    def __init__(self, key: bytes | None = None) -> None:
        self._aead = AESGCM(key) if key is not None else None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "DataCipher":
        value = (os.environ if environ is None else environ).get(DATA_KEY_ENV)
        return cls(parse_data_key(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self._aead is not None

    def seal(self, data: bytes, aad: str = "") -> bytes:
        if self._aead is None:
            return data
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + nonce + self._aead.encrypt(nonce, data, aad.encode("utf-8"))

    def open_(self, blob: bytes, aad: str = "") -> bytes:
        if not blob.startswith(MAGIC):
            return blob  # written before a key was configured
        if self._aead is None:
            raise DataKeyError(f"stored data is encrypted; set {DATA_KEY_ENV} to the key it "
                               "was written with")
        nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:],
                                      aad.encode("utf-8"))
        except InvalidTag:
            raise DataKeyError(f"stored data does not decrypt: {DATA_KEY_ENV} is not the key "
                               "it was written with, or the data was altered") from None
