"""Schema-driven fuzzing (schemathesis) of the inference routes of a real server, against its
own /openapi.json: every answer is documented (status, content type, schema), none is a 5xx,
and the server serves afterwards. Bounded: a fixed number of examples per operation."""
from __future__ import annotations

import random

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                              response_schema_conformance,
                                              status_code_conformance)
from schemathesis.checks import not_a_server_error

from adversarial_helpers import canary

FUZZED = (r"^/(v1/(completions|chat/completions|responses|embeddings|classify|models|usage|"
          r"files(/.*)?|batches(/.*)?)|tokenize|detokenize|health|ready)$")
EXAMPLES_PER_OPERATION = 15


def _aim(case, server) -> None:
    """Half the bodies name a served model, so validation past the model lookup is reached;
    generations are kept short so the pass stays within its time budget."""
    body = case.body
    if not isinstance(body, dict) or random.random() < 0.5:
        return
    body["model"] = "tiny-classifier" if case.path in ("/v1/embeddings", "/v1/classify") \
        else server.model
    for name in ("max_tokens", "max_output_tokens"):
        if isinstance(body.get(name), int) and body[name] > 8:
            body[name] = 8
    body.pop("max_completion_tokens", None)


def test_fuzzed_requests_get_documented_answers(adv_server):
    """Driven through schemathesis' strategies, not its pytest plugin (whose hooks follow
    pytest's internals and broke on pytest 9.2)."""
    schema = schemathesis.openapi.from_url(adv_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.include(path_regex=FUZZED)
                  .get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    for operation in operations:
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True,
                  database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def fuzz(case):
            _aim(case, adv_server)
            response = case.call(timeout=60)
            assert response.status_code < 500, (case.method, case.path, response.status_code,
                                                 response.text[:300])
            case.validate_response(response, checks=(
                not_a_server_error, status_code_conformance, content_type_conformance,
                response_schema_conformance))

        fuzz()


def test_server_serves_after_fuzzing(adv_server):
    canary(adv_server)
