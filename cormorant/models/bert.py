"""BERT-family encoders: BertModel (embeddings) and BertForSequenceClassification (a head).

Unlike the decoders these run no KV cache and no runner: one bidirectional forward over a
padded batch. Module and parameter names follow the Hugging Face checkpoints (embeddings.*,
encoder.layer.N.attention.self.query, ...), so models/weights.load_weights fills them
directly; q/k/v are fused into one QKVParallelLinear through packed_modules_mapping.
Forward contract, for a padded batch of B sequences of up to L tokens:
    hidden = model.encode(input_ids [B, L], attention_mask [B, L] bool)  # [B, L, hidden]
    logits = model.classify(hidden)                # [B, num_labels] float32 (heads only)
`EncoderConfig` holds the encoder's facts (ModelConfig describes decoders: RoPE, RMSNorm).
Imports: torch, cormorant.layers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cormorant.layers.embedding import VocabParallelEmbedding
from cormorant.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear

_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True)
class EncoderConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    id2label: tuple[str, ...] = ()  # index -> label name; empty for a bare encoder
    problem_type: str | None = None  # "multi_label_classification": sigmoid, not softmax

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


def encoder_config_from_hf(cfg: dict) -> EncoderConfig:
    """config.json of a BERT-family checkpoint -> EncoderConfig; ValueError if unsupported."""
    architecture = (cfg.get("architectures") or ["BertModel"])[0]
    position_type = cfg.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ValueError(f"position_embedding_type {position_type!r} is not supported "
                         "(only absolute)")
    act = cfg.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise ValueError(f"unsupported encoder activation {act!r}; supported: "
                         f"{', '.join(sorted(_ACTIVATIONS))}")
    id2label: tuple[str, ...] = ()
    if architecture.endswith("ForSequenceClassification"):
        labels = {int(k): str(v) for k, v in (cfg.get("id2label") or {}).items()}
        num_labels = cfg.get("num_labels") or len(labels) or 2
        id2label = tuple(labels.get(i, f"LABEL_{i}") for i in range(num_labels))
    return EncoderConfig(
        architecture=architecture, vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
        num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
        max_position_embeddings=cfg.get("max_position_embeddings", 512),
        type_vocab_size=cfg.get("type_vocab_size", 2),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-12), hidden_act=act,
        pad_token_id=cfg.get("pad_token_id") or 0, id2label=id2label,
        problem_type=cfg.get("problem_type"))


class BertEmbeddings(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.word_embeddings = VocabParallelEmbedding(config.vocab_size, hidden)
        self.position_embeddings = VocabParallelEmbedding(config.max_position_embeddings, hidden)
        self.token_type_embeddings = VocabParallelEmbedding(config.type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device)
        # One segment: every token has type 0 (sentence pairs are not taken yet).
        hidden = (self.word_embeddings(input_ids.flatten()).view(batch, length, -1)
                  + self.position_embeddings(positions)[None]
                  + self.token_type_embeddings.weight[0])  # [B, L, hidden]
        return self.LayerNorm(hidden)


class BertSelfAttention(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.qkv_proj = QKVParallelLinear(config.hidden_size, config.head_dim, config.num_heads,
                                          config.num_heads, bias=True)
        self.num_heads = self.qkv_proj.num_heads
        self.head_dim = config.head_dim

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape
        qkv = self.qkv_proj(hidden).view(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, D]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, L, D]
        return out.transpose(1, 2).reshape(batch, length, -1)  # [B, L, H * D]


class BertSelfOutput(nn.Module):
    """The projection after attention (or after the MLP), then add & LayerNorm (post-norm)."""

    def __init__(self, in_size: int, config: EncoderConfig) -> None:
        super().__init__()
        self.dense = RowParallelLinear(in_size, config.hidden_size, bias=True)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config.hidden_size, config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, mask), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dense = ColumnParallelLinear(config.hidden_size, config.intermediate_size,
                                          bias=True)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(hidden))


class BertLayer(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertSelfOutput(config.intermediate_size, config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.attention(hidden, mask)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_layers))

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, mask)
        return hidden


class BertPooler(nn.Module):
    """tanh(dense(hidden of the first token, [CLS])): the classification head's input."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dense = ColumnParallelLinear(config.hidden_size, config.hidden_size, bias=True)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # [B, hidden]


class BertModel(nn.Module):
    """The bare encoder. Its checkpoint's pooler is not loaded: embeddings are pooled from
    the token states (mean pooling), never from [CLS] through the pooler."""

    packed_modules_mapping = {"query": ("qkv_proj", "q"), "key": ("qkv_proj", "k"),
                              "value": ("qkv_proj", "v")}
    has_pooler = False

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if self.has_pooler else None

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids [B, L] int64, attention_mask [B, L] bool (True: a real token)."""
        mask = attention_mask[:, None, None, :]  # [B, 1, 1, L]: padding is never attended
        return self.encoder(self.embeddings(input_ids), mask)  # [B, L, hidden]

    def is_ignored_weight(self, name: str) -> bool:
        if name.endswith("position_ids"):  # a saved arange buffer
            return True
        return not self.has_pooler and name.startswith("pooler.")


class BertForSequenceClassification(nn.Module):
    packed_modules_mapping = BertModel.packed_modules_mapping

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if not config.num_labels:
            raise ValueError("a sequence-classification model needs at least one label")
        self.config = config
        self.bert = _PooledBertModel(config)
        self.classifier = RowParallelLinear(config.hidden_size, config.num_labels, bias=True)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert.encode(input_ids, attention_mask)

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B, L, hidden] -> [B, num_labels] float32 logits."""
        return self.classifier(self.bert.pooler(hidden)).float()

    def is_ignored_weight(self, name: str) -> bool:
        return name.endswith("position_ids")


class _PooledBertModel(BertModel):
    has_pooler = True


def pad_batch(seqs: list[list[int]], pad_id: int, device: torch.device
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (input_ids [B, L] right-padded, attention_mask [B, L] bool)."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.bool)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = True
    return ids.to(device), mask.to(device)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The average of each sequence's real-token states, L2-normalised (sentence-transformers'
    mean pooling + Normalize), computed in float32. [B, L, H] -> [B, H]."""
    weights = attention_mask.unsqueeze(-1).float()  # [B, L, 1]
    summed = (hidden.float() * weights).sum(1)
    pooled = summed / weights.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=-1)
