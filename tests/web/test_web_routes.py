"""The pages over plain HTTP: served under the route table (public shells, data behind keys),
with the security headers, only the listed files, and source that never turns text into HTML."""
from __future__ import annotations

import re
from importlib import resources

import httpx
import pytest

from cormorant.server import route_web

WEB = resources.files("cormorant.server").joinpath("web")


def _get(server, path: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.url + path, headers=headers, timeout=30)


@pytest.mark.parametrize("path,kind", [("/", "text/html"), ("/playground", "text/html"),
                                       ("/console", "text/html"),
                                       ("/web/playground.js", "text/javascript"),
                                       ("/web/app.css", "text/css")])
def test_pages_load_without_a_key_with_strict_headers(keyed_server, path, kind):
    response = _get(keyed_server, path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(kind)
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and "unsafe" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


def test_the_data_the_pages_show_needs_a_key(keyed_server):
    keys = keyed_server.keys
    for path in ("/v1/models", "/metrics", "/v1/usage", "/admin/models"):
        assert _get(keyed_server, path).status_code == 401, path
    assert _get(keyed_server, "/v1/models", keys.alice).status_code == 200
    for path in ("/metrics", "/v1/usage", "/admin/models"):  # the console's data: admin only
        assert _get(keyed_server, path, keys.alice).status_code == 403, path
        assert _get(keyed_server, path, keys.admin).status_code == 200, path


@pytest.mark.parametrize("path", ["/web/nope.js", "/web/route_web.py", "/web/..%2fapp.py",
                                  "/web/%2e%2e/route_web.py", "/web/", "/web/app.css/x"])
def test_only_the_listed_files_are_served(keyed_server, path):
    response = _get(keyed_server, path, keyed_server.keys.alice)
    assert response.status_code == 404, (path, response.text[:200])
    assert response.headers["content-type"] == "application/json"
    assert b"__future__" not in response.content


def test_every_shipped_file_is_served_and_listed():
    shipped = {p.name for p in WEB.iterdir() if p.is_file()}
    assert shipped == set(route_web.ASSETS) | set(route_web.PAGES.values()) | set(route_web.PARTS)


def test_the_source_never_makes_html_from_text():
    for item in WEB.iterdir():
        text = item.read_text()
        if item.name.endswith(".js"):
            for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                           "eval(", "new Function", "setAttribute(\"on", "srcdoc"):
                assert banned not in text, (item.name, banned)
        if item.name.endswith(".html"):
            assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", text) == [], item.name
            assert not re.search(r"\son[a-z]+=", text), item.name  # no inline handlers
            assert " style=" not in text, item.name  # no inline styles (CSP style-src 'self')
            assert "http://" not in text and "https://" not in text, item.name  # no CDN
