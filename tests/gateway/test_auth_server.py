"""Auth in the real cormorant app (server.app.build_app, a tiny real engine, uvicorn as
server.launch configures it): the route-table test over every route the app has, scopes on
the real endpoints, allowed models, and path tricks against the real routes."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from starlette.routing import Mount

from cormorant.gateway.auth.routes import PUBLIC, RouteTable
from cormorant.server.app import build_app
from cormorant.server.config import ServerConfig
from cormorant.server.launch import uvicorn_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from server_helpers import tiny_engine_fixture  # noqa: E402
from support import store_keys  # noqa: E402

MODEL = "tiny-auth"


engine = tiny_engine_fixture("engine")


@pytest.fixture(scope="module")
def real_server(engine, tmp_path_factory, server_thread):
    """The real app with a key database; `.keys` maps a role to its token."""
    db = tmp_path_factory.mktemp("auth-server") / "keys.db"
    store, keys, _ = store_keys(db, [
        (role, scopes, {"allowed_models": models})
        for role, scopes, models in (("inference", {"inference"}, None),
                                     ("metrics", {"metrics"}, None),
                                     ("admin", {"admin"}, None),
                                     ("this_model", {"inference"}, {MODEL}),
                                     ("other_model", {"inference"}, {"some-other-model"}))])
    config = ServerConfig(served_model_name=MODEL, keys_db=str(db), keys_refresh_s=0.0)
    server = server_thread(config=uvicorn_config(build_app(engine, config), config, "warning"))
    server.start()
    wait_ready(server)
    server.keys = keys
    yield server
    server.stop()
    store.close()


def wait_ready(server, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.get("/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise RuntimeError("server did not become ready")


def app_routes(routes, prefix: str = "") -> list[tuple[str, str]]:
    """(path template, route type) of every route the app routes to, mounts included. Recent
    FastAPI keeps included routers lazy (`app.routes` holds `_IncludedRouter`s), so its
    iter_route_contexts flattens them where it exists."""
    try:
        from fastapi.routing import iter_route_contexts
        flat = [(c.original_route, c.path) for c in iter_route_contexts(routes)]
    except ImportError:  # older FastAPI: app.routes is already flat
        flat = [(r, r.path) for r in routes]
    out = []
    for route, path in flat:
        if isinstance(route, Mount):
            out += app_routes(route.routes, prefix + path)
        else:
            out.append((prefix + path, type(route).__name__))
    return out


def test_every_route_of_the_app_declares_a_scope(engine):
    app = build_app(engine, ServerConfig(served_model_name=MODEL))
    table = RouteTable()
    routes = app_routes(app.routes)
    assert len(routes) >= 10  # the enumeration found the app's routes, not nothing
    missing = [path for path, _ in routes if not table.declares(path)]
    assert not missing, f"routes without a scope in gateway/auth/routes.py: {missing}"
    assert not [p for p, kind in routes if "WebSocket" in kind]  # none is declared for them
    public = {path for path, _ in routes if table.match(path).scope == PUBLIC}
    # The probes, and the browser pages' static shells (server.route_web: no data in them).
    assert public == {"/health", "/ready", "/", "/playground", "/console", "/web/{name}"}
    assert table.match("/metrics").scope == "metrics"
    assert RouteTable(metrics_public=True).match("/metrics").scope == PUBLIC
    # And the test has teeth: a route added without a rule is reported.
    app.add_api_route("/v1/undeclared", lambda: None)
    assert [p for p, _ in app_routes(app.routes) if not table.declares(p)] == ["/v1/undeclared"]


def test_real_endpoints_by_scope(real_server, check_error):
    keys = real_server.keys
    client = openai.OpenAI(base_url=real_server.url + "/v1", api_key=keys["inference"],
                           max_retries=0, timeout=60)
    out = client.completions.create(model=MODEL, prompt="Hello", max_tokens=2)
    assert out.choices[0].text is not None
    for path in ("/v1/models", "/openapi.json", "/metrics", "/v1/usage"):
        check_error(real_server.get(path), 401, "missing_api_key")
    assert real_server.get("/health").status_code == 200
    assert real_server.get("/openapi.json", keys["inference"]).status_code == 200
    check_error(real_server.get("/metrics", keys["inference"]), 403, "insufficient_scope")
    assert real_server.get("/metrics", keys["metrics"]).status_code == 200
    check_error(real_server.get("/v1/usage", keys["inference"]), 403, "insufficient_scope")
    assert real_server.get("/v1/usage", keys["admin"]).status_code == 200
    check_error(real_server.request("POST", "/v1/completions", keys["admin"],
                                    json={"model": MODEL, "prompt": "x"}), 403)
    with pytest.raises(openai.AuthenticationError):
        wrong = keys["inference"][:-1] + ("x" if keys["inference"][-1] != "x" else "y")
        openai.OpenAI(base_url=real_server.url + "/v1", api_key=wrong, max_retries=0).models.list()


def test_allowed_models(real_server, check_error):
    keys = real_server.keys
    allowed = real_server.get("/v1/models", keys["this_model"]).json()["data"]
    assert [m["id"] for m in allowed] == [MODEL]
    assert real_server.get("/v1/models", keys["other_model"]).json()["data"] == []
    body = {"model": MODEL, "prompt": "Hi", "max_tokens": 1}
    assert real_server.request("POST", "/v1/completions", keys["this_model"],
                               json=body).status_code == 200
    denied = check_error(real_server.request("POST", "/v1/completions", keys["other_model"],
                                             json=body), 404, "model_not_found")
    # The same answer as for a model that does not exist: nothing learnt about what is served.
    unknown = check_error(real_server.request("POST", "/v1/completions", keys["other_model"],
                                              json={**body, "model": "nope"}), 404)
    assert denied["message"].replace(MODEL, "nope") == unknown["message"]
    assert MODEL not in unknown["message"]
    # A key that may use every model is told which are served.
    listed = check_error(real_server.request("POST", "/v1/completions", keys["inference"],
                                             json={**body, "model": "nope"}), 404)
    assert listed["message"].endswith(f"served: {MODEL}.")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    check_error(real_server.request("POST", "/v1/chat/completions", keys["other_model"],
                                    json=chat), 404, "model_not_found")
    check_error(real_server.get(f"/v1/models/{MODEL}", keys["other_model"]), 404)


@pytest.mark.parametrize("method,target", [
    ("GET", "//v1/models"), ("GET", "/v1%2Fmodels"), ("GET", "/V1/Models"),
    ("GET", "/health/../v1/models"), ("GET", "/ready/%2e%2e/metrics"),
    ("GET", "/health%2F..%2Fv1%2Fusage"), ("GET", "/OPENAPI.JSON"), ("GET", "/docs"),
    ("POST", "//v1/completions"), ("POST", "/v1//chat/completions"),
    ("POST", "/health/..%2Fv1/completions"), ("POST", "/V1/COMPLETIONS"),
    ("POST", "http://127.0.0.1/v1/completions"), ("POST", "/./tokenize")])
def test_path_tricks_on_the_real_app(real_server, raw, method, target):
    response = raw(real_server.port, target, method=method)
    assert response.status == 401, (target, response.body)
    assert json.loads(response.body)["error"]["code"] == "missing_api_key"
    assert response.headers.get("x-request-id")  # the real middleware order: id outermost


def test_metrics_public_on_the_real_app(engine, server_thread):
    config = ServerConfig(served_model_name=MODEL, api_key="sk-static", metrics_public=True)
    server = server_thread(config=uvicorn_config(build_app(engine, config), config, "warning"))
    server.start()
    try:
        assert server.get("/metrics").status_code == 200
        assert server.get("/v1/models").status_code == 401
        assert server.get("/v1/usage", "sk-static").status_code == 200  # static: every scope
    finally:
        server.stop()


def test_no_auth_configured_still_denies_unknown_paths(engine, raw, server_thread):
    config = ServerConfig(served_model_name=MODEL)
    server = server_thread(config=uvicorn_config(build_app(engine, config), config, "warning"))
    server.start()
    try:
        assert httpx.get(server.url + "/v1/models").status_code == 200
        assert raw(server.port, "//v1/models").status == 404
        assert raw(server.port, "/health/../v1/models").status == 404
    finally:
        server.stop()
