"""ModelRunner on the CPU: input packing, block-table rows, decode-graph buckets and padding,
the one-copy sampled-output path and the memory-profile inputs.

Tests play the engine with live Sequences and hand the runner what the engine hands it: the
plain ScheduledBatch of engine.batch_builder (full data once, then diffs).

The CUDA-graph code runs here with `DecodeGraphs.use_eager()`: the same static buffers, packed
head copies and padding rows as a replay, minus the capture. The padded batch must give every
real row exactly what the unpadded batch gives it, and write nothing else into the KV cache.
"""
from __future__ import annotations

import dataclasses
import random
import weakref

import numpy as np
import pytest
import torch

from cormorant.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from cormorant.engine.batch_builder import BatchBuilder
from cormorant.engine.scheduler import SchedulerOutput
from cormorant.engine.sequence import Sequence
from cormorant.engine.types import ScheduledBatch
from cormorant.layers.attention import TorchAttention
from cormorant.models.random_init import build_random_model
from cormorant.runner.cuda_graphs import graph_batch_sizes
from cormorant.runner.inputs import InputPreparer, dummy_prefill_inputs
from cormorant.runner.model_runner import HostCopy, ModelRunner
from cormorant.runner.request_state import BlockTableRows, RequestState, RequestStates
from cormorant.runner.sampler import SamplerOutput
from cormorant.sampling_params import SamplingParams

BLOCK = 4
TINY = ModelConfig("Qwen3ForCausalLM", vocab_size=97, hidden_size=64, intermediate_size=96,
                   num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                   max_position_embeddings=256, qk_norm=True)


class Blocks:
    """Hands out shuffled block ids, as a block manager with a fragmented pool would."""

    def __init__(self, num_blocks: int, seed: int = 0) -> None:
        self.free = list(range(num_blocks))
        random.Random(seed).shuffle(self.free)

    def cover(self, seq: Sequence, num_tokens: int) -> None:
        while len(seq.block_table) * BLOCK < num_tokens:
            seq.block_table.append(self.free.pop())


def make_seq(prompt_len: int, seed: int, **params) -> Sequence:
    rng = random.Random(seed)
    params.setdefault("temperature", 0.0)
    return Sequence(f"r{seed}", [rng.randrange(1, 97) for _ in range(prompt_len)],
                    SamplingParams(**params))


def schedule(seqs: list[Sequence], num_new: list[int], blocks: Blocks) -> SchedulerOutput:
    for seq, n in zip(seqs, num_new):
        blocks.cover(seq, seq.num_computed_tokens + n)
    do_sample = [s.num_computed_tokens + n >= s.num_tokens for s, n in zip(seqs, num_new)]
    return SchedulerOutput(seqs, list(num_new), do_sample)


_builders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def builder_of(runner: ModelRunner) -> BatchBuilder:
    """The engine side of one runner's seam: what that runner has been sent."""
    return _builders.setdefault(runner, BatchBuilder())


def execute(runner: ModelRunner, scheduled: SchedulerOutput):
    return runner.execute(builder_of(runner).build(scheduled))


def prepare(runner: ModelRunner, scheduled: SchedulerOutput, pad_to: int | None = None):
    """Pack a step's inputs as launch does (the runner's states updated from the batch)."""
    batch = builder_of(runner).build(scheduled)
    return runner.inputs.prepare(runner.requests.update(batch), batch, pad_to=pad_to)


def plain(scheduled: SchedulerOutput) -> tuple[list[RequestState], ScheduledBatch]:
    """A fresh runner's view of one batch: (row states, the plain batch)."""
    batch = BatchBuilder().build(scheduled)
    return RequestStates().update(batch), batch


def advance(batch: SchedulerOutput, outputs) -> list[int | None]:
    """What the engine does after a step: count computed tokens, append sampled ones."""
    for seq, n, out in zip(batch.seqs, batch.num_new_tokens, outputs):
        seq.num_computed_tokens += n
        if out.token_id is not None:
            seq.append_token(out.token_id)
    return [out.token_id for out in outputs]


def make_runner(model=None, max_num_seqs: int = 16, backend=None) -> ModelRunner:
    config = EngineConfig(model="<random>", dtype="float32", device="cpu",
                          cache=CacheConfig(block_size=BLOCK, num_blocks=200),
                          scheduler=SchedulerConfig(max_num_seqs=max_num_seqs,
                                                    max_num_batched_tokens=128,
                                                    max_model_len=128))
    if model is None:
        model = build_random_model(TINY, torch.float32, "cpu", seed=0, std=0.2,
                                   attn_backend=backend or TorchAttention())
    return ModelRunner(config, TINY, model, torch.device("cpu"), torch.float32, ())


# ------------------------------------------------------------------ bucket sizes
def test_graph_batch_sizes_cover_every_batch_up_to_max_num_seqs():
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(6) == [1, 2, 4, 6]
    assert graph_batch_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert graph_batch_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    sizes = graph_batch_sizes(4096)
    assert sizes[-1] == 512 and all(b - a == 8 for a, b in zip(sizes[4:], sizes[5:]))


def test_bucket_picks_smallest_fitting_size_and_refuses_prefill():
    graphs = make_runner(max_num_seqs=20).new_decode_graphs()
    seqs = [make_seq(3, i) for i in range(21)]
    assert [graphs.bucket([1] * n) for n in (1, 3, 8, 9, 17, 20)] == [1, 4, 8, 16, 20, 20]
    assert graphs.bucket([1] * 21) is None  # larger than the largest bucket: eager
    assert graphs.bucket([1, 3]) is None


# ------------------------------------------------------------------ input packing
def reference_inputs(batch: SchedulerOutput):
    """The plain per-token construction the packed path must reproduce."""
    ids, positions, slots, qsl, lens, tables = [], [], [], [0], [], []
    width = -(-max(s.num_computed_tokens + n for s, n in zip(batch.seqs, batch.num_new_tokens))
              // BLOCK)
    for seq, n in zip(batch.seqs, batch.num_new_tokens):
        start = seq.num_computed_tokens
        ids += seq.token_ids[start:start + n]
        positions += list(range(start, start + n))
        slots += [seq.block_table[p // BLOCK] * BLOCK + p % BLOCK for p in range(start, start + n)]
        qsl.append(qsl[-1] + n)
        lens.append(start + n)
        tables.append((seq.block_table + [0] * width)[:width])
    return ids, positions, slots, qsl, lens, tables


def test_packed_inputs_match_per_token_construction():
    blocks = Blocks(100)
    seqs = [make_seq(9, 0), make_seq(13, 1, prompt_logprobs=2), make_seq(5, 2), make_seq(7, 3)]
    for seq in seqs[2:]:  # two decodes with a generated token each
        seq.num_computed_tokens = seq.num_prompt_tokens
        seq.append_token(11)
    seqs[0].num_computed_tokens = 4  # a prompt chunk after a cached prefix
    batch = schedule(seqs, [5, 6, 1, 1], blocks)  # seqs[1]'s chunk stops short of its prompt
    prep = InputPreparer(BLOCK, 128, 8, torch.device("cpu"))
    inputs = prep.to_device(prep.prepare(*plain(batch)))
    ids, positions, slots, qsl, lens, tables = reference_inputs(batch)
    assert inputs.input_ids.tolist() == ids and inputs.input_ids.dtype == torch.int64
    assert inputs.positions.tolist() == positions
    assert inputs.attn.slot_mapping.tolist() == slots
    assert inputs.attn.query_start_loc.tolist() == qsl
    assert inputs.attn.query_start_loc.dtype == torch.int32
    assert inputs.attn.seq_lens.tolist() == lens and inputs.attn.seq_lens_cpu == lens
    assert inputs.attn.block_tables.tolist() == tables
    assert (inputs.attn.max_query_len, inputs.attn.max_seq_len) == (6, max(lens))
    assert inputs.sample_rows.tolist() == [4, 11, 12]  # seqs 0, 2, 3 reach their ends
    assert [s.seq_id for s in inputs.sampling_seqs] == [seqs[i].seq_id for i in (0, 2, 3)]
    [rows] = inputs.prompt_logprob_rows
    assert (rows.batch_index, rows.rows) == (1, list(range(5, 11)))
    assert rows.target_ids == seqs[1].prompt_token_ids[1:7] and rows.num_top == 2


def test_decode_packing_with_padding_rows():
    blocks = Blocks(100)
    seqs = [make_seq(n, i) for i, n in enumerate((6, 9, 3))]
    for seq in seqs:
        seq.num_computed_tokens = seq.num_prompt_tokens - 1
    batch = schedule(seqs, [1, 1, 1], blocks)
    prep = InputPreparer(BLOCK, 128, 8, torch.device("cpu"))
    host = prep.prepare(*plain(batch), pad_to=8)
    v = host.views
    assert v["input_ids"].tolist()[:3] == [s.token_ids[-1] for s in seqs]
    assert v["slot_mapping"].tolist()[3:] == [-1] * 5
    assert v["positions"].tolist() == [5, 8, 2] + [0] * 5
    assert v["query_start_loc"].tolist() == list(range(9))
    assert v["seq_lens"].tolist() == [6, 9, 3] + [1] * 5
    assert host.seq_lens == [6, 9, 3] + [1] * 5 and host.query_lens == [1] * 8
    assert v["block_tables"].shape == (3, 3)  # only real rows travel
    assert host.samples_all_rows and host.layout.num_sample_rows == 0


def test_block_table_rows_follow_growth_replacement_and_release():
    rows = BlockTableRows(capacity=3, max_blocks=8)
    a, b = make_seq(3, 0), make_seq(3, 1)
    a.block_table, b.block_table = [5, 6], [7]
    ra, rb = rows.rows_for([a, b])
    a.block_table.extend([9, 2])  # the block manager grows tables in place
    assert rows.rows_for([a]).tolist() == [ra]
    assert rows.table[ra, :4].tolist() == [5, 6, 9, 2]
    b.block_table = [3, 4]  # preempted and re-admitted: a new list, maybe as long
    rows.rows_for([b])
    assert rows.table[rb, :2].tolist() == [3, 4]
    rows.release(a.seq_id)
    c = make_seq(3, 2)
    c.block_table = [1]
    assert rows.rows_for([c]).tolist() == [ra]  # the freed row is reused
    assert rows.table[ra, 0] == 1
    d, e = make_seq(3, 3), make_seq(3, 4)
    d.block_table, e.block_table = [8], [0]
    # Capacity 3 with b, c held: e needs a row, so sequences outside this batch are dropped.
    rows.rows_for([d, e])
    assert set(rows._entries) == {d.seq_id, e.seq_id}
    with pytest.raises(ValueError, match="max_model_len"):
        d.block_table.extend(range(10, 20))
        rows.rows_for([d])


# ------------------------------------------------------------------ padded decode graphs
def _decode_batch(num_seqs: int, blocks: Blocks, runner: ModelRunner) -> SchedulerOutput:
    """Prefill num_seqs prompts of different lengths eagerly, then schedule one decode."""
    seqs = [make_seq(3 + 5 * i % 17, 10 + i) for i in range(num_seqs)]
    batch = schedule(seqs, [s.num_prompt_tokens for s in seqs], blocks)
    advance(batch, execute(runner, batch))
    return schedule(seqs, [1] * num_seqs, blocks)


@pytest.mark.parametrize("num_seqs", [3, 5])
def test_padded_decode_changes_no_real_row_and_writes_no_extra_slot(num_seqs):
    runner = make_runner()
    graphs = runner.new_decode_graphs()
    graphs.use_eager()
    batch = _decode_batch(num_seqs, Blocks(200), runner)
    bucket = graphs.bucket(batch.num_new_tokens)
    assert bucket > num_seqs  # the batch really is padded
    before = [c.clone() for c in runner.kv_caches]
    with torch.inference_mode():
        inputs = runner.inputs.to_device(prepare(runner, batch))
        expected = runner.model(inputs.input_ids, inputs.positions, runner.kv_caches,
                                inputs.attn)
        cache_eager = [c.clone() for c in runner.kv_caches]
        for cache, saved in zip(runner.kv_caches, before):
            cache.copy_(saved)
        hidden, sample_rows = graphs.run(prepare(runner, batch, pad_to=bucket))
    assert sample_rows is None and hidden.shape == expected.shape
    torch.testing.assert_close(hidden, expected, rtol=1e-5, atol=1e-5)
    for got, want, old in zip(runner.kv_caches, cache_eager, before):
        # The same slots written (the real rows' new tokens, nothing for padding rows) ...
        written = lambda cache: (cache != old).flatten(3).any(-1).any(0)  # noqa: E731
        assert torch.equal(written(got), written(want)) and written(got).sum() == num_seqs
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # ... with the same values


def test_runner_with_graph_path_matches_eager_runner_over_many_steps():
    """Greedy tokens and logprobs of two runners sharing weights, one taking the padded
    decode path, across prefills, then decode batches that grow and shrink (buckets 4, 8,
    4, 2, 1) as sequences join and finish (and the next batch frees their rows)."""
    eager = make_runner()
    padded = make_runner(model=eager.model)
    padded.graphs = padded.new_decode_graphs()
    padded.graphs.use_eager()
    replays = 0
    run = padded.graphs.run

    def counting_run(host):
        nonlocal replays
        replays += 1
        return run(host)
    padded.graphs.run = counting_run
    results = []
    for runner in (eager, padded):
        blocks = Blocks(200)
        seqs = [make_seq(4 + 3 * i, 50 + i, logprobs=2 if i == 1 else None) for i in range(6)]
        max_out = [3 + 2 * i for i in range(6)]
        tokens, logprobs, done = [], [], set()
        for step in range(30):
            live = [s for s, m in zip(seqs[:3] if step < 2 else seqs, max_out)
                    if s.num_output_tokens < m]
            if not live:
                break
            batch = schedule(live, [s.num_tokens - s.num_computed_tokens for s in live], blocks)
            outputs = execute(runner, batch)
            tokens.append(advance(batch, outputs))
            logprobs += [o.logprobs for o in outputs if o.logprobs]
            newly = {s.seq_id for s, m in zip(seqs, max_out) if s.num_output_tokens == m} - done
            for seq_id in newly:
                builder_of(runner).finish(seq_id)  # the next batch drops it
            done |= newly
        results.append((tokens, logprobs))
        # Every finished sequence left the runner with the next batch; those of the last
        # step wait for one more.
        assert set(runner.inputs.block_tables._entries) == set(runner.requests.states) == newly
    assert results[0][0] == results[1][0]
    sizes = [len(t) for t in results[0][0]]
    assert sizes[:3] == [3, 3, 6] and {1, 2, 3, 4, 5} <= set(sizes[3:])
    assert replays == len(sizes) - 2  # all but the prefill and the mixed step replayed
    for (value, top), (value2, top2) in zip(results[0][1], results[1][1]):
        assert value == pytest.approx(value2, abs=1e-5) and top.keys() == top2.keys()


# ------------------------------------------------------------------ output copy, profile
def test_host_copy_unpacks_ids_and_logprobs_exactly():
    logprobs = torch.log_softmax(torch.randn(3, 50, dtype=torch.float32), -1)
    top_values, top_ids = logprobs.topk(4, dim=-1)
    ids = torch.tensor([7, 49, 0])
    result = SamplerOutput(ids, logprobs.gather(1, ids[:, None])[:, 0], top_ids, top_values)
    token_ids, chosen, got_ids, got_values = HostCopy(torch.device("cpu")).fetch(result)
    assert token_ids == [7, 49, 0] and all(type(t) is int for t in token_ids)
    assert chosen == result.logprobs.tolist()
    assert got_ids == top_ids.tolist() and got_values == top_values.tolist()
    assert HostCopy(torch.device("cpu")).fetch(SamplerOutput(ids)) == ([7, 49, 0], None, None,
                                                                       None)


def test_profile_inputs_split_at_max_model_len_and_write_nothing():
    inputs = dummy_prefill_inputs(300, 128, BLOCK, torch.device("cpu"))
    assert inputs.attn.query_lens_cpu == [128, 128, 44]
    assert inputs.positions.max().item() == 127 and inputs.input_ids.shape == (300,)
    assert bool((inputs.attn.slot_mapping == -1).all())
    runner = make_runner()
    cache = [torch.zeros(2, 1, BLOCK, 2, 16) for _ in range(2)]
    with torch.inference_mode():
        hidden = runner.model(inputs.input_ids, inputs.positions, cache, inputs.attn)
    assert hidden.shape == (300, 64) and bool(hidden.isfinite().all())
    assert all(not c.any() for c in cache)
    assert np.isfinite(hidden.sum().item())
    runner.profile_step()  # the memory profile's step runs (sizes only measured on CUDA)
    assert runner.sampler.num_generators == 0  # unseeded profile rows left no state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (captures graphs)")
@pytest.mark.parametrize("cache_dtype", ["auto", "fp8"])
def test_captured_graphs_match_eager_on_cuda(cache_dtype):
    """On a GPU: the real capture and replay give the eager runner's greedy tokens (with an
    fp8 KV cache too: its scales are read from device tensors inside the graph)."""
    from cormorant.layers.triton_attention import TritonAttention

    config = EngineConfig(model="<random>", dtype="float32", device="cuda",
                          cache=CacheConfig(block_size=BLOCK, num_blocks=200,
                                            cache_dtype=cache_dtype),
                          scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=128,
                                                    max_model_len=128))
    model = build_random_model(TINY, torch.float32, "cuda", seed=0, std=0.2,
                               attn_backend=TritonAttention())
    for layer in model.model.layers:  # checkpoint-like scales (used by the fp8 cache only)
        layer.self_attn.kv_scales.load_scale("k_scale", torch.tensor(0.5))
        layer.self_attn.kv_scales.load_scale("v_scale", torch.tensor(0.25))
    device = torch.device("cuda")
    runners = [ModelRunner(config, TINY, model, device, torch.float32, ()),
               ModelRunner(dataclasses.replace(config, enforce_eager=True), TINY, model, device,
                           torch.float32, ())]
    assert runners[0].graphs is not None and runners[1].graphs is None
    expected = torch.float8_e4m3fn if cache_dtype == "fp8" else torch.float32
    assert all(r.kv_caches[0].dtype == expected for r in runners)
    tokens = []
    for runner in runners:
        blocks, seqs = Blocks(200), [make_seq(3 + 4 * i, 70 + i) for i in range(5)]
        got = []
        for _ in range(8):
            batch = schedule(seqs, [s.num_tokens - s.num_computed_tokens for s in seqs], blocks)
            got.append(advance(batch, execute(runner, batch)))
        tokens.append(got)
    assert tokens[0] == tokens[1]
