"""Embedder: an encoder model (BERT family) served for embeddings and classification.

An engine object like AsyncLLM (never a singleton; a server may hold several): it owns the
tokenizer, the model and a batching queue. Requests await `embed(seqs)` or `classify(seqs)`;
a worker task on the event loop takes every job waiting at that moment, and one worker
thread runs them as shared forward passes (padded batches bounded by max_batch_tokens), so
requests that arrive together, or while a forward runs, cost one forward rather than many.
Embeddings are mean-pooled over the real tokens and L2-normalised (sentence-transformers'
Pooling + Normalize); classification returns the head's probabilities (softmax; sigmoid for
multi-label heads) with the config's id2label names.
Imports: torch, text.tokenizer, models (loader, bert).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from cormorant.models.bert import EncoderConfig, mean_pool, pad_batch
from cormorant.models.loader import load_encoder
from cormorant.models.loader import resolve_device
from cormorant.runner.kv_cache import module_bytes
from cormorant.text.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Classification:
    label: str
    probs: list[float]  # index = class id
    logits: list[float]


@dataclass
class _Job:
    kind: str  # "embed" or "classify"
    seqs: list[list[int]]
    future: asyncio.Future = field(repr=False)


class Embedder:
    def __init__(self, model: torch.nn.Module, config: EncoderConfig, tokenizer: Tokenizer,
                 model_name: str, device: torch.device, *, max_batch_tokens: int = 16384,
                 max_batch_size: int = 128) -> None:
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.device = device
        self.max_model_len = config.max_position_embeddings
        self.vocab_size = config.vocab_size
        self.labels: tuple[str, ...] = config.id2label
        self.is_classifier = hasattr(model, "classify")
        self.max_batch_tokens = max(max_batch_tokens, self.max_model_len)
        self.max_batch_size = max_batch_size
        self.num_forward_passes = 0  # read by tests and metrics: batching saves forwards
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else config.pad_token_id
        # One thread: forwards run one at a time, off the event loop.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="cormorant-embed")
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_path(cls, path: str, *, name: str | None = None, dtype: str = "auto",
                  device: str = "auto", **kwargs) -> Embedder:
        start = time.perf_counter()
        device_ = resolve_device(device)
        model, config = load_encoder(path, dtype, device_)
        tokenizer = load_encoder_tokenizer(path)
        name = name or os.path.basename(os.path.normpath(path))
        log.info("loaded encoder %s (%s) in %.1f s", path, config.architecture,
                 time.perf_counter() - start)
        return cls(model, config, tokenizer, name, device_, **kwargs)

    @property
    def memory_bytes(self) -> int:
        return module_bytes(self.model)

    def tokenize(self, text: str) -> list[int]:
        """With [CLS] ... [SEP]: what the model was trained on."""
        return self.tokenizer.encode(text, add_special_tokens=True)

    async def embed(self, seqs: list[list[int]]) -> list[list[float]]:
        """One unit-length float32 vector per token-id sequence."""
        return await self._submit("embed", seqs)

    async def classify(self, seqs: list[list[int]]) -> list[Classification]:
        if not self.is_classifier:
            raise ValueError(f"model {self.model_name!r} has no classification head")
        return await self._submit("classify", seqs)

    def shutdown(self) -> None:
        if self._worker is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._worker.cancel)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- batching ----------------------------------------------------------------------------

    async def _submit(self, kind: str, seqs: list[list[int]]) -> list:
        for seq in seqs:  # the server validated these; this guards the model's embeddings
            assert 0 < len(seq) <= self.max_model_len, len(seq)
        if not seqs:
            return []
        queue = self._ensure_worker()
        job = _Job(kind, seqs, asyncio.get_running_loop().create_future())
        queue.put_nowait(job)
        return await job.future

    def _ensure_worker(self) -> asyncio.Queue[_Job]:
        """The worker lives on the loop of the requests (created lazily: the server's loop
        does not exist yet when the embedder is built)."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._loop is not loop:
            self._loop = loop
            self._queue = asyncio.Queue()
            self._worker = loop.create_task(self._run(self._queue))
        assert self._queue is not None
        return self._queue

    async def _run(self, queue: asyncio.Queue[_Job]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await queue.get()]
            await asyncio.sleep(0)  # requests arriving in the same loop turn join this batch
            num_tokens = sum(map(len, jobs[0].seqs))
            while not queue.empty() and num_tokens < self.max_batch_tokens:
                jobs.append(queue.get_nowait())
                num_tokens += sum(map(len, jobs[-1].seqs))
            jobs = [job for job in jobs if not job.future.done()]  # the client left
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._forward, jobs)
            except Exception as exc:  # a failed forward fails its requests, not the worker
                log.exception("encoder forward failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, result in zip(jobs, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)

    # --- the worker thread -------------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, jobs: list[_Job]) -> list[list]:
        """Every job's sequences in length-sorted padded chunks; results back in job order."""
        flat = [(j, i) for j, job in enumerate(jobs) for i in range(len(job.seqs))]
        flat.sort(key=lambda ji: -len(jobs[ji[0]].seqs[ji[1]]))  # little padding per chunk
        results: list[list] = [[None] * len(job.seqs) for job in jobs]
        for chunk in self._chunks([len(jobs[j].seqs[i]) for j, i in flat]):
            rows = [flat[k] for k in chunk]
            kinds = {jobs[j].kind for j, _ in rows}
            outs = self._forward_chunk([jobs[j].seqs[i] for j, i in rows], kinds)
            for row, (j, i) in enumerate(rows):
                results[j][i] = outs[jobs[j].kind][row]
        return results

    def _chunks(self, lengths: list[int]) -> list[list[int]]:
        """Indices into `lengths` (sorted longest first) grouped so that each padded chunk
        (rows x longest row) stays within max_batch_tokens and max_batch_size."""
        chunks: list[list[int]] = []
        for k, length in enumerate(lengths):
            if chunks and len(chunks[-1]) < self.max_batch_size and \
                    (len(chunks[-1]) + 1) * lengths[chunks[-1][0]] <= self.max_batch_tokens:
                chunks[-1].append(k)
            else:
                chunks.append([k])
        return chunks

    def _forward_chunk(self, seqs: list[list[int]], kinds: set[str]) -> dict[str, list]:
        input_ids, mask = pad_batch(seqs, self.pad_id, self.device)
        hidden = self.model.encode(input_ids, mask)  # [B, L, hidden]
        self.num_forward_passes += 1
        outs: dict[str, list] = {}
        if "embed" in kinds:
            outs["embed"] = mean_pool(hidden, mask).cpu().tolist()  # [B, hidden]
        if "classify" in kinds:
            logits = self.model.classify(hidden)  # [B, num_labels] float32
            if self.config.problem_type == "multi_label_classification":
                probs = torch.sigmoid(logits)
            else:
                probs = torch.softmax(logits, dim=-1)
            outs["classify"] = [
                Classification(self.labels[int(p.argmax())], p.tolist(), lg.tolist())
                for p, lg in zip(probs.cpu(), logits.cpu())]
        return outs


def load_encoder_tokenizer(path: str) -> Tokenizer:
    """An encoder's tokenizer as the embedder uses it (scale-out ingresses tokenize alike)."""
    tokenizer = load_tokenizer(path)
    _disable_builtin_padding(tokenizer)
    return tokenizer


def _disable_builtin_padding(tokenizer: Tokenizer) -> None:
    """Some tokenizer.json files (all-MiniLM-L6-v2's) pad every encoding to a fixed length
    and truncate: the embedder pads its own batches and the server rejects over-long inputs,
    so both are switched off on this tokenizer (the embedder owns it)."""
    backend = getattr(tokenizer.hf, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
