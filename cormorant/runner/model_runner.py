"""ModelRunner: owns the model, the KV cache and the sampler; runs one ScheduledBatch.

Imports torch, config, engine types, layers and models. Returns plain token ids (and
logprobs) to the engine: tensors never leave the runner.
"""
from __future__ import annotations

import logging

import torch

from cormorant.config import EngineConfig, ModelConfig
from cormorant.engine.types import SampleOutput, ScheduledBatch, TokenLogprobs
from cormorant.runner.inputs import ModelInputs, PromptLogprobRows, prepare_inputs
from cormorant.runner.kv_cache import allocate_kv_caches, num_kv_blocks
from cormorant.runner.sampler import Sampler, SamplingMetadata

log = logging.getLogger(__name__)


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, model: torch.nn.Module,
                 device: torch.device, dtype: torch.dtype, eos_token_ids: tuple[int, ...]):
        self.config = config
        self.model_config = model_config
        self.model = model
        self.device = device
        self.dtype = dtype
        self.eos_token_ids = eos_token_ids
        self.block_size = config.cache.block_size
        self.sampler = Sampler()
        self.num_blocks = num_kv_blocks(model_config, config.cache, config.scheduler,
                                        dtype, device)
        self.kv_caches = allocate_kv_caches(model_config, self.num_blocks, self.block_size,
                                            dtype, device)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> list[SampleOutput]:
        """One forward pass; a SampleOutput per sequence of the batch, in batch order."""
        inputs = prepare_inputs(batch, self.block_size, self.device)
        hidden = self.model(inputs.input_ids, inputs.positions, self.kv_caches, inputs.attn)
        outputs = [SampleOutput(token_id=None) for _ in batch.seqs]
        for rows in inputs.prompt_logprob_rows:
            outputs[rows.batch_index].prompt_logprobs = self._prompt_logprobs(hidden, rows)
        if inputs.sampling_seqs:
            self._sample(hidden, inputs, batch, outputs)
        return outputs

    def release(self, seq_id: int) -> None:
        """Forget per-sequence sampler state (seeded generators) of a finished sequence."""
        self.sampler.release(seq_id)

    def _sample(self, hidden: torch.Tensor, inputs: ModelInputs, batch: ScheduledBatch,
                outputs: list[SampleOutput]) -> None:
        logits = self.model.compute_logits(hidden[inputs.sample_rows])  # [N, vocab] fp32
        meta = SamplingMetadata.build(inputs.sampling_seqs, self.device, self.eos_token_ids)
        result = self.sampler(logits, meta)
        # The one device-to-host copy of the step.
        token_ids = result.token_ids.tolist()
        chosen = result.logprobs.tolist() if result.logprobs is not None else None
        top_ids = result.topk_ids.tolist() if result.topk_ids is not None else None
        top_values = result.topk_values.tolist() if result.topk_values is not None else None
        position = {seq.seq_id: i for i, seq in enumerate(batch.seqs)}
        for row, seq in enumerate(inputs.sampling_seqs):
            out = outputs[position[seq.seq_id]]
            out.token_id = token_ids[row]
            k = seq.sampling_params.logprobs
            if k is not None and chosen is not None:
                top = {} if top_ids is None else dict(zip(top_ids[row][:k], top_values[row][:k]))
                out.logprobs = (chosen[row], top)

    def _prompt_logprobs(self, hidden: torch.Tensor, rows: PromptLogprobRows) -> list[TokenLogprobs]:
        logits = self.model.compute_logits(hidden[torch.tensor(rows.rows, device=self.device)])
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # [R, vocab]
        targets = torch.tensor(rows.target_ids, device=self.device)
        chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
        k = rows.num_top
        top_values, top_ids = logprobs.topk(k, dim=-1) if k else (None, None)
        result = []
        for r, value in enumerate(chosen):
            top = dict(zip(top_ids[r].tolist(), top_values[r].tolist())) if k else {}
            result.append((value, top))
        return result
