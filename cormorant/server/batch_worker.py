"""BatchWorker: runs every active batch to its end, resuming after a restart.

One task per active batch (found in the store at start-up, and whenever a batch is created
or cancelled). A batch goes validating -> in_progress -> finalizing -> completed; or, at its
`expires_at`, to expired (its unanswered lines answered with `batch_expired` errors, as
OpenAI does); or cancelling -> cancelled. Lines run through server.batch_lines, at most
`batch_concurrency` at once over all batches; each result is committed on its own
(gateway.batch.store.put_result: once per line), so a server killed at any moment resumes
with the lines that have no result and none is answered twice. Finalizing writes the output
and error files under ids derived from the batch id, so doing it again after a crash
overwrites rather than duplicates. A batch runs under this worker's lease in the store
(ServerConfig.batch_lease_s, renewed at least every POLL_S), so servers sharing a database
never run one batch twice; a killed server's batches resume when its lease runs out. Imports asyncio and server/gateway modules.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

from cormorant.gateway.batch.files import FileVault
from cormorant.gateway.batch.store import BatchStore
from cormorant.server.batch_lines import Retry, principal_of, serve_line

logger = logging.getLogger("cormorant.server")
POLL_S = 1.0
MAX_RETRY_S = 5.0


def file_doc(file_id: str, filename: str, purpose: str, size: int) -> dict:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()),
            "filename": filename, "purpose": purpose, "status": "processed",
            "status_details": None}


def expired_line(custom_id: str) -> dict:
    return {"id": None, "custom_id": custom_id, "response": None,
            "error": {"code": "batch_expired", "message": "This line was not executed "
                      "because the batch expired before it could run."}}


class BatchWorker:
    def __init__(self, state: Any, store: BatchStore, vault: FileVault) -> None:
        self.state = state
        self.store = store
        self.vault = vault
        self._tasks: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, state.config.batch_concurrency))
        self.instance = secrets.token_hex(8)  # this worker's name on the batches it leases
        self.lease_s = state.config.batch_lease_s

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """The lifespan task: start a task per active batch, until cancelled."""
        try:
            while True:
                for batch_id in await self.store.call(self.store.active_batch_ids):
                    if batch_id not in self._tasks and await self._claim(batch_id):
                        task = asyncio.ensure_future(self._guarded(batch_id))
                        self._tasks[batch_id] = task
                        task.add_done_callback(lambda _t, b=batch_id: self._tasks.pop(b, None))
                with_timeout = asyncio.wait_for(self._wake.wait(), POLL_S)
                await asyncio.gather(with_timeout, return_exceptions=True)
                self._wake.clear()
        finally:
            for task in list(self._tasks.values()):
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _claim(self, batch_id: str) -> bool:
        return await self.store.call(self.store.claim, batch_id, self.instance, self.lease_s)

    async def _guarded(self, batch_id: str) -> None:
        try:
            await self._run_batch(batch_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("batch %s failed; it will be retried", batch_id)
            await asyncio.sleep(POLL_S)
        finally:  # a graceful stop hands the batch on at once; a crash, when the lease ends
            await asyncio.shield(self.store.call(self.store.release, batch_id, self.instance))

    async def _doc(self, batch_id: str) -> dict:
        doc = await self.store.call(self.store.get_batch, batch_id, None)
        assert doc is not None, batch_id
        return doc

    async def _move(self, doc: dict, status: str, expect: tuple[str, ...]) -> bool:
        """The transition expect -> status, if the batch is still in one of `expect`."""
        doc = {**doc, "status": status, f"{status}_at": int(time.time())}
        return await self.store.call(self.store.save_batch, doc, expect)

    async def _run_batch(self, batch_id: str) -> None:
        """Take the batch from whatever status it is in to its end; each transition is
        conditional, so a cancel arriving meanwhile is never overwritten (re-read, go on)."""
        while True:
            doc = await self._doc(batch_id)
            status = doc["status"]
            if status == "validating":
                await self._move(doc, "in_progress", ("validating",))
            elif status == "in_progress":
                outcome = await self._run_lines(batch_id, doc)
                if outcome == "lost":
                    return  # another worker holds it now
                if outcome == "expired":
                    await self.store.call(self.store.fail_pending, batch_id, expired_line)
                    await self._finish(doc, "expired", ("in_progress", "cancelling"))
                elif outcome == "done":
                    await self._move(doc, "finalizing", ("in_progress",))
            elif status == "cancelling":
                await self._finish(doc, "cancelled", ("cancelling",))
            elif status == "finalizing":
                await self._finish(doc, "completed", ("finalizing",))
            else:
                return

    async def _run_lines(self, batch_id: str, doc: dict) -> str:
        """Run the unanswered lines; "done", "cancelled", "expired" or "lost" (the lease)."""
        principal = principal_of(doc["_principal"])
        limit = max(1, self.state.config.batch_concurrency)
        running: dict[asyncio.Task, int] = {}
        try:
            while True:
                if not await self._claim(batch_id):  # renewed every pass (<= POLL_S)
                    return "lost"
                status = (await self.store.call(self.store.get_batch, batch_id, None))["status"]
                if status == "cancelling":
                    return "cancelled"
                if time.time() >= doc["expires_at"]:
                    return "expired"
                room = limit - len(running)
                lines = await self.store.call(self.store.pending_lines, batch_id, room,
                                              frozenset(running.values())) if room else []
                for line_no, custom_id, line in lines:
                    task = asyncio.ensure_future(
                        self._run_line(batch_id, principal, line_no, custom_id, line))
                    running[task] = line_no
                if not running:
                    return "done"
                timeout = max(0.0, min(POLL_S, doc["expires_at"] - time.time()))
                finished, _ = await asyncio.wait(running, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    del running[task]
                    if not task.cancelled() and task.exception() is not None:
                        logger.error("batch %s line failed: %r", batch_id, task.exception())
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _run_line(self, batch_id: str, principal: Any, line_no: int, custom_id: str,
                        line: dict) -> None:
        while True:
            async with self._slots:
                try:
                    result = await serve_line(self.state, principal, custom_id, line)
                except Retry as retry:
                    wait = min(MAX_RETRY_S, max(0.05, retry.after_s))
                else:
                    status = result["response"]["status_code"]
                    await self.store.call(self.store.put_result, batch_id, line_no, result,
                                          status >= 400)
                    return
            await asyncio.sleep(wait)

    async def _finish(self, doc: dict, status: str, expect: tuple[str, ...]) -> None:
        """Write the output and error files (ids derived from the batch id) and end it."""
        results = await self.store.call(self.store.results, doc["id"])
        suffix = doc["id"].removeprefix("batch_")
        for is_error, key, name in ((False, "output_file_id", "output"),
                                    (True, "error_file_id", "error")):
            lines = [r for r, err in results if err == is_error]
            if not lines:
                doc[key] = None
                continue
            file_id = f"file-{suffix}-{name}"
            data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in lines).encode()
            await asyncio.to_thread(self.vault.write, file_id, data)
            await self.store.call(self.store.put_file, file_doc(
                file_id, f"{doc['id']}_{name}.jsonl", "batch_output", len(data)), doc["_owner"])
            doc[key] = file_id
        await self._move(doc, status, expect)
