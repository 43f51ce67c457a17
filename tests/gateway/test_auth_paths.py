"""Path tricks: every spelling of a protected route, sent byte for byte over a raw socket,
gets 401 without a key. With a key, a spelling that Starlette would route differently from
what was authorized is a 404, never a different route."""
from __future__ import annotations

import json

import pytest

# Each of these names /v1/models (or reaches it after normalisation) in some server or proxy.
PROTECTED_SPELLINGS = [
    "/v1/models",
    "//v1/models",
    "///v1/models",
    "/v1//models",
    "/v1/models/",
    "/v1/models//",
    "/./v1/models",
    "/v1/./models",
    "/health/../v1/models",
    "/ready/../../v1/models",
    "/health/%2e%2e/v1/models",
    "/health/%2E%2E/v1/models",
    "/health/.%2e/v1/models",
    "/health%2F..%2Fv1%2Fmodels",
    "/health/..%2Fv1/models",
    "/health/..%5Cv1/models",
    "/health/..\\v1/models",
    "/v1%2Fmodels",
    "/v1%2fmodels",
    "%2Fv1%2Fmodels",
    "/v1%252Fmodels",
    "/v1%25252Fmodels",
    "/%76%31/%6d%6f%64%65%6c%73",
    "/V1/MODELS",
    "/V1/models",
    "/v1/Models",
    "/v1/models;x",
    "/v1/models/.",
    "/v1/models/%2e",
    "/health/../V1/Models",
    "/health/%00/../v1/models",
    "/metrics",
    "//metrics",
    "/METRICS",
    "/health/../metrics",
    "/admin/usage",
    "//admin//usage",
    "/ADMIN/usage",
    "/health/../admin/usage",
    "/health%2F..%2Fadmin%2Fusage",
    "http://127.0.0.1/v1/models",
    "http://127.0.0.1/health/../v1/models",
    "*",
]


@pytest.mark.parametrize("method,target", [("GET", t) for t in PROTECTED_SPELLINGS] + [
    ("POST", "/v1/completions"), ("POST", "//v1/completions"), ("POST", "/v1//completions"),
    ("POST", "/v1%2Fcompletions"), ("POST", "/V1/Completions"),
    ("POST", "/health/../v1/chat/completions"), ("POST", "/ready/%2e%2e/tokenize"),
    ("POST", "/health/..%2f..%2fv1%2fchat%2fcompletions")])
def test_every_spelling_is_401_without_a_key(shared_gateway, raw, method, target):
    response = raw(shared_gateway.port, target, method=method)
    assert response.status == 401, (target, response.status, response.body)
    assert json.loads(response.body)["error"]["code"] == "missing_api_key"
    # A wrong key is no better than none.
    response = raw(shared_gateway.port, target, method=method,
                   headers={"Authorization": "Bearer static-test-kex"})
    assert response.status == 401, (target, response.status, response.body)


def test_host_header_does_not_matter(shared_gateway, raw):
    server = shared_gateway
    for host in ("127.0.0.1/health", "localhost", "evil.example", "127.0.0.1:1/health?",
                 "internal", "[::1]"):
        assert raw(server.port, "/v1/models", host=host).status == 401, host
    for header in ("X-Forwarded-Prefix", "X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Uri"):
        response = raw(server.port, "/v1/models", headers={header: "/health"})
        assert response.status == 401, header


def test_root_path_prefix(gateway_server, raw, make_key):
    """uvicorn --root-path (a proxy strips the prefix): uvicorn puts it back in front of
    path and raw_path, and both sides strip it the same way."""
    token = make_key()
    server = gateway_server(root_path="/api")
    assert raw(server.port, "/health").status == 200
    for target in ("/v1/models", "/api/v1/models", "/api/health", "/api//v1/models",
                   "/api/../v1/models", "/health/../v1/models", "/api%2Fv1/models",
                   "/API/v1/models", "//v1/models", "/../api/v1/models"):
        assert raw(server.port, target).status == 401, target
    auth = {"Authorization": f"Bearer {token}"}
    response = raw(server.port, "/v1/models", headers=auth)
    assert response.status == 200 and json.loads(response.body)["path"] == "/api/v1/models"
    assert raw(server.port, "/api/v1/models", headers=auth).status == 404


def test_with_a_key_non_canonical_paths_are_404_not_another_route(gateway_server, raw,
                                                                  make_key):
    token = make_key(scopes=("inference", "metrics", "admin"))
    server = gateway_server()
    auth = {"Authorization": f"Bearer {token}"}
    # Starlette would route these somewhere other than what the canonical path names (or
    # nowhere): refused rather than guessed.
    for target in ("//v1/models", "/health/../v1/models", "/v1/models/", "/v1%252Fmodels",
                   "/v1/./models", "/health/..%2Fv1/models"):
        response = raw(server.port, target, headers=auth)
        assert response.status == 404, (target, response.body)
        assert json.loads(response.body)["error"]["code"] == "not_found"
    # Canonical once decoded the way both sides decode it: the one route it names.
    response = raw(server.port, "/v1%2Fmodels", headers=auth)
    assert response.status == 200 and json.loads(response.body)["path"] == "/v1/models"


def test_case_variant_of_a_public_path_reaches_nothing(shared_gateway, raw):
    server = shared_gateway
    # Public by its folded name, but Starlette matches case-sensitively: a 404, no handler.
    assert raw(server.port, "/HEALTH").status == 404
    assert raw(server.port, "/Health/../v1/models").status == 401
