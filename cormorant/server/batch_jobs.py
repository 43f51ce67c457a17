"""BatchJobs: the Files and Batch APIs' state on one server (store, vault, worker), and the
owner checks every route of theirs shares.

Files and batches belong to the key that made them: a lookup filters by the caller's key id,
so another key gets the same 404 as an unknown id and learns nothing. The batch database is
the usage store's (ServerConfig.usage_db), the files directory ServerConfig.files_dir, both
sealed with ServerConfig.data_key when it is set. Imports server and gateway modules.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request

from cormorant.gateway.auth.keys import Principal
from cormorant.gateway.auth.middleware import get_principal
from cormorant.gateway.batch.files import FileVault
from cormorant.gateway.batch.store import BatchStore
from cormorant.gateway.crypto import DataCipher, DataKeyError
from cormorant.server.batch_worker import BatchWorker
from cormorant.server.config import ServerConfig
from cormorant.server.errors import APIError, bound

logger = logging.getLogger("cormorant.server")


class BatchJobs:
    def __init__(self, state: Any, config: ServerConfig) -> None:
        cipher = DataCipher(config.data_key)
        self.store = BatchStore(config.usage_db, cipher)
        self.vault = FileVault(config.files_dir, cipher)
        if config.files_dir is not None:
            try:
                _ = self.vault.dir  # made now, so a directory we cannot use shows at once
            except OSError as exc:  # the rest of the server serves on; uploads will fail
                logger.error("batch files directory %s: %s", config.files_dir, exc)
        self.worker = BatchWorker(state, self.store, self.vault)

    def start(self) -> asyncio.Task:
        return asyncio.ensure_future(self.worker.run())

    def close(self) -> None:
        self.store.close()
        self.vault.close()


def jobs_of(request: Request) -> BatchJobs:
    jobs = request.app.state.cormorant.batch_jobs
    if jobs is None:
        raise APIError(404, "The Batch API is not enabled on this server.", code="not_found")
    return jobs


def caller(request: Request) -> Principal:
    return get_principal(request) or Principal.anonymous()


def public(doc: dict) -> dict:
    """A stored document as the API shows it: without the server's own fields."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}


async def owned(request: Request, kind: str, object_id: str) -> dict:
    """The caller's file or batch (kind "file" | "batch") `object_id`; 404 for one that does
    not exist or belongs to another key (the same answer: ids are not disclosed)."""
    jobs = jobs_of(request)
    get = jobs.store.get_file if kind == "file" else jobs.store.get_batch
    doc = await jobs.store.call(get, object_id, caller(request).key_id)
    if doc is None:
        raise not_found(kind, object_id)
    return doc


def not_found(kind: str, object_id: str) -> APIError:
    return APIError(404, f"No {kind} found with id '{bound(object_id, 128)}'.",
                    code="not_found")


def data_key_error(exc: DataKeyError) -> APIError:
    return APIError(500, f"Stored data could not be read: {exc}", code="data_key_error")
