"""ModelRunner: owns the model, the KV cache and the sampler; runs one ScheduledBatch.

Start-up on a GPU: a profile run (the largest forward plus a sampler pass with every stage
on) measures the activation peak, the KV cache is sized from what is left and allocated, then
the decode CUDA graphs are captured (runner.cuda_graphs; skipped with enforce_eager or a
backend that cannot be captured).

A step: bring the runner's own per-sequence state up to date from the batch (plain data:
new sequences whole, then diffs; runner.request_state), pack its ints on the host
(runner.inputs) and copy them in one go; replay a graph for a pure-decode batch that fits a
bucket, else run the model eagerly; build the sampling metadata on the host while the GPU
works; sample; copy the sampled ids (and logprobs, when asked) to the host in one
non_blocking copy into pinned memory, then wait on its event: the step's only host
synchronisation.

Two halves (async scheduling, engine.core): `launch(batch)` queues all of the above and returns
a `StepHandle` without waiting; `collect(handle)` waits for the copy and builds the
SampleOutputs; `execute` is the two back to back. Between them the engine launches the next
step, whose decode rows may carry a placeholder input id (negative) for the token the previous
launch is still sampling: `fill_placeholders` writes it on the device, a gather by row from
that launch's sampled-ids tensor, so no host round-trip sits between the steps.

Imports torch, numpy, config, engine types, layers (through the model) and this package.
Returns plain token ids (and logprobs) to the engine: tensors never leave the runner.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from cormorant.config import GPU_MAX_NUM_BATCHED_TOKENS, EngineConfig, ModelConfig
from cormorant.engine.types import MaskBits, SampleOutput, ScheduledBatch
from cormorant.layers.kv_quant import kv_cache_torch_dtype
from cormorant.layers.parallel import min_over_ranks
from cormorant.runner.cpu_compile import CompiledDecode, cpu_compile_enabled
from cormorant.runner.cuda_graphs import (DecodeGraphs, find_attention_backend,
                                          graph_batch_sizes, is_capturable)
from cormorant.runner.inputs import (HostInputs, InputPreparer, PromptLogprobRows,
                                     dummy_prefill_inputs)
from cormorant.runner.kv_cache import allocate_kv_caches, module_bytes, num_kv_blocks
from cormorant.runner.request_state import RequestState, RequestStates
from cormorant.runner.sampler import Sampler, SamplerOutput, SamplingMetadata
from cormorant.sampling_params import SamplingParams

log = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, model: torch.nn.Module,
                 device: torch.device, dtype: torch.dtype, eos_token_ids: tuple[int, ...]):
        self.config = config
        self.model_config = model_config
        self.model = model
        self.device = device
        self.is_asynchronous = device.type == "cuda"  # see engine.core's async scheduling
        self.dtype = dtype
        # The cache's element type: the model's, or float8_e4m3fn (--kv-cache-dtype fp8).
        self.kv_dtype = kv_cache_torch_dtype(config.cache.cache_dtype, dtype)
        self.eos_token_ids = eos_token_ids
        self.block_size = config.cache.block_size
        sched = config.scheduler
        self.max_model_len = sched.max_model_len or model_config.max_position_embeddings
        self.sampler = Sampler(config.seed)  # seeds the requests that bring no seed
        self.requests = RequestStates()
        self.inputs = InputPreparer(self.block_size, self.max_model_len, sched.max_num_seqs,
                                    device)
        self._host_copy = HostCopy(device)
        self._last_sampled: LastSampled | None = None  # for the next launch's placeholders
        check = getattr(find_attention_backend(model), "check_kv_cache", None)
        if check is not None:  # e.g. fp8 on a GPU the backend's kernels cannot serve
            check(self.kv_dtype, device)
        activation_bytes = None
        if device.type == "cuda" and config.cache.num_blocks is None:
            activation_bytes = self.profile_activations()
        # Tensor parallel: every rank sizes its own cache, the smallest wins (layers.parallel).
        self.num_blocks = min_over_ranks(
            num_kv_blocks(model_config, config.cache, sched, self.kv_dtype, device,
                          weight_bytes=module_bytes(model), activation_bytes=activation_bytes),
            device)
        self.kv_caches = allocate_kv_caches(model_config, self.num_blocks, self.block_size,
                                            self.kv_dtype, device)
        self.graphs: DecodeGraphs | None = self._build_graphs()
        self.compiled: CompiledDecode | None = None  # the CPU's decode step (runner.cpu_compile)
        if cpu_compile_enabled(device, config.enforce_eager):
            self.compiled = CompiledDecode(model)
            self.compiled.warm_up(self.kv_caches)

    @property
    def memory_bytes(self) -> int:
        """Weights plus KV cache: what this runner holds on its device."""
        return module_bytes(self.model) + sum(t.nbytes for t in self.kv_caches)

    # -- start-up ---------------------------------------------------------------------------
    def _build_graphs(self) -> DecodeGraphs | None:
        if self.device.type != "cuda" or self.config.enforce_eager:
            return None
        backend = find_attention_backend(self.model)
        if not is_capturable(backend):
            log.info("CUDA graphs off: attention backend %s cannot be captured",
                     type(backend).__name__)
            return None
        graphs = self.new_decode_graphs()
        try:
            graphs.capture()
        except Exception:  # a backend or driver that cannot capture: still serve, eagerly
            log.exception("CUDA graph capture failed; decode steps will run eagerly")
            torch.cuda.synchronize(self.device)
            return None
        return graphs

    def new_decode_graphs(self) -> DecodeGraphs:
        """Static decode buffers for this runner's buckets (capture or use_eager them)."""
        sizes = graph_batch_sizes(self.config.scheduler.max_num_seqs)
        return DecodeGraphs(self.model, self.kv_caches, sizes, self.max_model_len,
                            self.block_size, self.device)

    def profile_activations(self) -> int:
        """Bytes the largest step adds on top of the weights (vLLM's profile_run), measured
        as the CUDA allocator's peak over `profile_step`."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        self.profile_step()
        torch.cuda.synchronize(self.device)
        return max(0, torch.cuda.max_memory_allocated(self.device) - base)

    @torch.inference_mode()
    def profile_step(self) -> None:
        """The largest step the scheduler can send: a forward over max_num_batched_tokens
        prompt tokens against a one-block dummy cache (nothing written), then logits and a
        sampler pass for max_num_seqs rows with every optional stage on."""
        sched, cfg = self.config.scheduler, self.model_config
        num_tokens = max(sched.max_num_batched_tokens or GPU_MAX_NUM_BATCHED_TOKENS,
                         sched.max_num_seqs)
        inputs = dummy_prefill_inputs(num_tokens, self.max_model_len, self.block_size,
                                      self.device)
        caches = [torch.zeros(2, 1, self.block_size, cfg.num_kv_heads, cfg.head_dim,
                              dtype=self.kv_dtype, device=self.device)
                  for _ in range(cfg.num_layers)]
        hidden = self.model(inputs.input_ids, inputs.positions, caches, inputs.attn)
        rows = torch.arange(sched.max_num_seqs, device=self.device) % num_tokens
        logits = self.model.compute_logits(hidden[rows])
        self.sampler(logits, _profile_sampling_metadata(sched.max_num_seqs, self.device))

    # -- steps ------------------------------------------------------------------------------
    def execute(self, batch: ScheduledBatch) -> list[SampleOutput]:
        """One forward pass; a SampleOutput per sequence of the batch, in batch order."""
        return self.collect(self.launch(batch))

    @torch.inference_mode()
    def launch(self, batch: ScheduledBatch, defer_sampling: bool = False) -> StepHandle:
        """Queue the step (forward, sampling, the copy of the sampled ids to the host) and
        return without waiting for the device. Placeholder input ids (negative: the token
        the previous launch is sampling for that sequence) are filled on the device.
        defer_sampling: queue the forward only; `sample(handle, ...)` queues the rest once
        the engine has the grammar masks (computed while this forward runs)."""
        for seq_id in batch.finished_seq_ids:
            self.release(seq_id)
        seqs = self.requests.update(batch)
        bucket = self.graphs.bucket(batch.num_new_tokens) if self.graphs is not None else None
        host = self.inputs.prepare(seqs, batch, pad_to=bucket)
        fill = None
        if host.placeholder_rows:
            last = self._last_sampled

            def fill(input_ids: torch.Tensor) -> None:
                fill_placeholders(input_ids, host.placeholder_rows, host.placeholder_seq_ids,
                                  last)
        if bucket is None:
            inputs = self.inputs.to_device(host)
            if fill is not None:
                fill(inputs.input_ids)
            hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.attn)
            sample_rows = inputs.sample_rows
        else:
            hidden, sample_rows = (self.graphs.run(host) if fill is None
                                   else self.graphs.run(host, fill))
            self.inputs.staging.mark_copied()
        handle = StepHandle(num_seqs=len(batch))
        self._last_sampled = None
        handle.prompt_logprobs = [(rows.batch_index, rows.num_top,
                                   self._prompt_logprob_table(hidden, rows))
                                  for rows in host.prompt_logprob_rows]
        if host.sampling_seqs:
            handle.deferred = (hidden, sample_rows, host)
            if not defer_sampling:
                self.sample(handle, batch.mask_rows, batch.mask_bits)
        return handle

    @torch.inference_mode()
    def sample(self, handle: StepHandle, mask_rows: list[int], mask_bits: MaskBits) -> None:
        """Queue a launched step's sampling (under the grammar masks of its batch rows
        `mask_rows`) and the copy of its ids to the host."""
        if handle.deferred is None:
            return  # no sequence samples in this step
        hidden, sample_rows, host = handle.deferred
        handle.deferred = None
        result = self._sample(hidden, sample_rows, host, _grammar_rows(mask_rows, mask_bits,
                                                                       host))
        handle.copy = self._host_copy.start(result)
        handle.sample_indices = host.sample_indices
        handle.num_logprobs = [seq.sampling_params.logprobs for seq in host.sampling_seqs]
        self._last_sampled = LastSampled(result.token_ids,
                                         [seq.seq_id for seq in host.sampling_seqs])

    def collect(self, handle: StepHandle) -> list[SampleOutput]:
        """Wait for a launched step's ids (and logprobs): a SampleOutput per sequence."""
        outputs = [SampleOutput(token_id=None) for _ in range(handle.num_seqs)]
        if handle.copy is not None:
            token_ids, chosen, top_ids, top_values = handle.copy.wait()
            for row, (index, k) in enumerate(zip(handle.sample_indices, handle.num_logprobs)):
                out = outputs[index]
                out.token_id = token_ids[row]
                if k is not None and chosen is not None:
                    top = ({} if top_ids is None
                           else dict(zip(top_ids[row][:k], top_values[row][:k])))
                    out.logprobs = (chosen[row], top)
        for index, k, table in handle.prompt_logprobs:
            outputs[index].prompt_logprobs = [
                (r[0], dict(zip((int(t) for t in r[1:1 + k]), r[1 + k:])))
                for r in table.tolist()]  # [R, 1 + 2k]
        return outputs

    def release(self, seq_id: int) -> None:
        """Forget a finished sequence (its state, sampler generator and block-table row); the
        engine sends these ids with the next batch."""
        self.requests.states.pop(seq_id, None)
        self.sampler.release(seq_id)
        self.inputs.release(seq_id)

    def _sample(self, hidden: torch.Tensor, sample_rows: torch.Tensor | None,
                host: HostInputs, grammar: tuple[list[int], MaskBits] | None) -> SamplerOutput:
        # hidden rows = sampling rows, in order, when sample_rows is None (pure decode).
        logits = self.model.compute_logits(
            hidden if sample_rows is None else hidden[sample_rows])  # [N, vocab] fp32
        # Host work while the forward runs on the GPU: nothing above waited for it.
        meta = SamplingMetadata.build(host.sampling_seqs, self.device, self.eos_token_ids,
                                      grammar)
        return self.sampler(logits, meta)

    def _prompt_logprob_table(self, hidden: torch.Tensor, rows: PromptLogprobRows
                              ) -> torch.Tensor:
        """[R, 1 + 2k] float64 on the device: the target's logprob, then top-k ids and values
        (float64 holds token ids and float32 logprobs exactly: one copy for the group)."""
        index = torch.tensor(rows.rows, device=self.device)
        logprobs = torch.log_softmax(self.model.compute_logits(hidden[index]).float(), dim=-1)
        targets = torch.tensor(rows.target_ids, device=self.device)
        parts = [logprobs.gather(1, targets[:, None]).double()]  # [R, 1]
        k = rows.num_top
        if k:
            top_values, top_ids = logprobs.topk(k, dim=-1)
            parts += [top_ids.double(), top_values.double()]
        return torch.cat(parts, dim=1)


class HostCopy:
    """A step's one device-to-host copy: sampled ids, and when asked the chosen logprobs and
    top-k, packed into one tensor and copied non_blocking into a pinned buffer. Two buffers
    used in turn, so step n+1's copy can be queued before step n's is read (async
    scheduling); `start` returns the pending copy, `fetch` waits at once."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._bufs: list[torch.Tensor | None] = [None, None]
        self._events = ([torch.cuda.Event(), torch.cuda.Event()] if device.type == "cuda"
                        else None)
        self._current = 0

    def fetch(self, result: SamplerOutput) -> tuple[list, list | None, list | None, list | None]:
        """(token ids, chosen logprobs, top-k ids, top-k values) as Python lists."""
        return self.start(result).wait()

    def start(self, result: SamplerOutput) -> PendingCopy:
        """Queue the copy; the buffer it fills is reused two starts later, so wait() on it
        before then."""
        if result.logprobs is None:
            return self._copy(result.token_ids, False, 0)
        parts = [result.token_ids[:, None].double(), result.logprobs[:, None].double()]
        k = 0
        if result.topk_ids is not None:
            k = result.topk_ids.shape[1]
            parts += [result.topk_ids.double(), result.topk_values.double()]
        # float64 holds token ids and float32 logprobs exactly.
        return self._copy(torch.cat(parts, dim=1), True, k)  # [N, 2 + 2k]

    def _copy(self, t: torch.Tensor, has_logprobs: bool, k: int) -> PendingCopy:
        if self._events is None:
            return PendingCopy(t, None, has_logprobs, k)
        self._current ^= 1
        buf, event = self._bufs[self._current], self._events[self._current]
        nbytes = t.numel() * t.element_size()
        if buf is None or buf.numel() < nbytes:
            buf = self._bufs[self._current] = torch.empty(max(nbytes, 4096), dtype=torch.uint8,
                                                          pin_memory=True)
        host = buf[:nbytes].view(t.dtype).view(t.shape)
        host.copy_(t, non_blocking=True)
        event.record()
        return PendingCopy(host, event, has_logprobs, k)


# ------------------------------------------------------------- async scheduling: the handle
class PendingCopy:
    """A device-to-host copy of one step's packed sample table, started but not waited for.
    `wait()` returns (token ids, chosen logprobs, top-k ids, top-k values) as Python lists."""

    def __init__(self, host: torch.Tensor, event: torch.cuda.Event | None, has_logprobs: bool,
                 num_top: int) -> None:
        self._host = host  # pinned (CUDA) or the CPU result itself
        self._event = event
        self._has_logprobs = has_logprobs
        self._num_top = num_top

    def wait(self) -> tuple[list, list | None, list | None, list | None]:
        if self._event is not None:
            self._event.synchronize()
        table = self._host.numpy()
        if not self._has_logprobs:
            return table.tolist(), None, None, None
        k = self._num_top
        top_ids = table[:, 2:2 + k].astype(np.int64).tolist() if k else None
        top_values = table[:, 2 + k:].tolist() if k else None
        return table[:, 0].astype(np.int64).tolist(), table[:, 1].tolist(), top_ids, top_values


@dataclass
class LastSampled:
    """The sampled ids of the most recent launch, still on the device, by sequence."""

    token_ids: torch.Tensor  # [N] int64 on the device
    seq_ids: list[int]  # the sequence of each row
    _rows: dict[int, int] | None = None

    def row_of(self, seq_id: int) -> int:
        if self._rows is None:
            self._rows = {s: row for row, s in enumerate(self.seq_ids)}
        return self._rows[seq_id]


@dataclass
class StepHandle:
    """One launched step: everything `collect` needs, nothing the host has to wait for."""

    num_seqs: int
    copy: PendingCopy | None = None  # None: no sequence sampled
    sample_indices: list[int] = field(default_factory=list)  # batch index of each sample row
    num_logprobs: list[int | None] = field(default_factory=list)  # per sample row
    # (batch index, top-k count, [R, 1 + 2k] float64 table on the device) per prompt chunk.
    prompt_logprobs: list[tuple[int, int, torch.Tensor]] = field(default_factory=list)
    # A forward whose sampling waits for `ModelRunner.sample`: (hidden, sample rows, inputs).
    deferred: tuple | None = None


def fill_placeholders(input_ids: torch.Tensor, dst_rows: list[int], seq_ids: list[int],
                      last: LastSampled | None) -> None:
    """input_ids[dst_rows[i]] = the id `last` sampled for seq_ids[i], on the device's stream
    (no host sync). Batches that keep their order (steady decode) need no index copy."""
    assert last is not None, "placeholder input ids but no earlier launch sampled them"
    src_rows = [last.row_of(seq_id) for seq_id in seq_ids]
    k = len(dst_rows)
    if dst_rows == src_rows == list(range(k)):
        input_ids[:k].copy_(last.token_ids[:k])
        return
    index = torch.tensor([dst_rows, src_rows], dtype=torch.int64)  # [2, K]
    if input_ids.device.type == "cuda":
        index = index.pin_memory().to(input_ids.device, non_blocking=True)
    input_ids.index_copy_(0, index[0], last.token_ids.index_select(0, index[1]))


def _grammar_rows(mask_rows: list[int], mask_bits: MaskBits, host: HostInputs
                  ) -> tuple[list[int], MaskBits] | None:
    """Constrained batch rows as sampling rows (the logits' order), with their bits."""
    if not mask_rows:
        return None
    sampling_row = {index: row for row, index in enumerate(host.sample_indices)}
    return [sampling_row[i] for i in mask_rows], mask_bits


def _profile_sampling_metadata(num_rows: int, device: torch.device) -> SamplingMetadata:
    """Rows that switch on every sampler stage (penalties, top-k/p, min-p, logprobs), so the
    profile sees the sampler's largest temporaries."""
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, min_p=0.01,
                            repetition_penalty=1.1, presence_penalty=0.1,
                            frequency_penalty=0.1, logprobs=20, max_tokens=1)
    seqs = [RequestState(-1 - i, 0, params, [0], 1) for i in range(num_rows)]
    return SamplingMetadata.build(seqs, device)
