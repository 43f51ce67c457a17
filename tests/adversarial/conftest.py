"""Fixtures of the adversarial suite: one real server on the tiny model with tight transport
limits (short header/body deadlines, a small per-address connection cap), and the canary that
every case ends with: a real generation through the official client still succeeds."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "server"))

from adversarial_helpers import (BODY_TIMEOUT_S, HEADER_TIMEOUT_S,  # noqa: E402
                                 MAX_CONNECTIONS_PER_CLIENT, canary)
from server_helpers import running_server, tiny_engine_fixture  # noqa: E402

__all__ = ["BODY_TIMEOUT_S", "HEADER_TIMEOUT_S", "MAX_CONNECTIONS_PER_CLIENT", "canary"]


adv_llm = tiny_engine_fixture("adv_llm", "session")


@pytest.fixture(scope="session")
def adv_encoder(tmp_path_factory):
    """A tiny random BERT classifier, so /v1/embeddings and /v1/classify are served too."""
    from cormorant.frontend.embedder import Embedder
    from models.test_bert import save_tiny_bert_classifier

    path = save_tiny_bert_classifier(tmp_path_factory.mktemp("adv-bert-cls"))
    return Embedder.from_path(str(path), name="tiny-classifier", device="cpu")


@pytest.fixture(scope="session")
def adv_server(adv_llm, adv_encoder):
    with running_server(adv_llm, encoders=[adv_encoder], header_timeout_s=HEADER_TIMEOUT_S,
                        body_timeout_s=BODY_TIMEOUT_S,
                        max_connections_per_client=MAX_CONNECTIONS_PER_CLIENT) as server:
        yield server


@pytest.fixture
def alive(adv_server):
    yield adv_server
    canary(adv_server)
