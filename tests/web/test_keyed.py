"""The pages against a real keyed multi-model server, in real headless Chromium: the key
prompt, the model and parameters the playground sends (and its copy-as-curl / -Python
snippets, run for real), the console's live charts, the alias swap and rollback buttons,
screenshots and an axe-core check."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import httpx
import pytest

from web_helpers import (PHONE, axe_violations, describe, enter_key, fits_width, send,
                         wait_idle, wait_models)


def aliases(server) -> dict:
    response = httpx.get(server.url + "/admin/models", timeout=30,
                         headers={"authorization": f"Bearer {server.keys.admin}"})
    assert response.status_code == 200, response.text
    return response.json()["aliases"]


def test_the_playground_asks_for_a_key_and_keeps_it_in_the_browser(keyed_server, page):
    page.goto(keyed_server.url + "/")  # the page itself loads without a key
    page.wait_for_selector("#key-dialog[open]")
    assert "needs an API key" in page.inner_text("#key-reason")
    enter_key(page, "sk-wrong")
    page.wait_for_selector("#key-dialog[open]")  # refused: asked again
    enter_key(page, keyed_server.keys.alice)
    assert set(wait_models(page)) >= {"live", "chat@1", "chat@2"}
    assert page.evaluate("() => sessionStorage.getItem('cormorant.apiKey')") == \
        keyed_server.keys.alice
    assert page.evaluate("() => localStorage.getItem('cormorant.apiKey')") is None
    assert page.context.cookies() == []


def test_model_and_parameters_are_what_the_page_sends(keyed_server, page, tmp_path):
    keys = keyed_server.keys
    page.goto(keyed_server.url + "/playground")
    enter_key(page, keys.alice)
    wait_models(page)
    requests = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and requests.append(r))
    page.select_option("#model", "chat@2")
    page.fill("#system", "Be brief.")
    page.fill("#temperature", "0.3")
    page.fill("#top_p", "0.9")
    page.fill("#max_tokens", "7")
    page.fill("#seed", "42")
    page.fill("#stop", "foo, bar")
    send(page, "Hi")
    wait_idle(page, timeout=120_000)
    assert len(requests) == 1
    body = requests[0].post_data_json
    assert body["model"] == "chat@2"
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi"}]
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == \
        (0.3, 0.9, 7, 42)
    assert body["stop"] == ["foo", "bar"] and body["stream"] is True
    assert requests[0].headers["authorization"] == f"Bearer {keys.alice}"
    meta = page.inner_text(".msg.assistant .meta")
    assert "error" not in meta and "tokens" in meta, meta
    # The snippets describe the same request, and they run.
    env = {**os.environ, "CORMORANT_API_KEY": keys.alice}
    page.click("#copy-python")
    script = tmp_path / "snippet.py"
    script.write_text(page.input_value("#snippet"))
    assert "seed=42" in script.read_text() and 'model="chat@2"' in script.read_text()
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    page.click("#copy-curl")
    done = subprocess.run(["bash", "-c", page.input_value("#snippet")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.rstrip().endswith("data: [DONE]"), done.stdout


def _traffic(server, stop: threading.Event) -> None:
    client = server.client(api_key=server.keys.bob)
    while not stop.is_set():
        stream = client.chat.completions.create(
            model="live", messages=[{"role": "user", "content": "Count"}], max_tokens=48,
            stream=True, extra_body={"ignore_eos": True})
        for _ in stream:
            pass


def _open_console(server, page, query: str = "?interval=400") -> None:
    page.goto(server.url + "/console" + query)
    page.wait_for_selector("#key-dialog[open]")
    enter_key(page, server.keys.admin)
    page.wait_for_selector("#aliases-table tbody tr")


def test_the_console_needs_the_admin_scope(keyed_server, page):
    page.goto(keyed_server.url + "/console")
    enter_key(page, keyed_server.keys.alice)  # a valid key, without the admin scope
    page.wait_for_selector("#key-dialog[open]")
    assert "admin scope" in page.inner_text("#key-reason")
    assert page.locator("#aliases-table tbody tr").count() == 0


def test_an_admin_key_without_the_metrics_scope_gets_the_tables_only(keyed_server, page):
    page.goto(keyed_server.url + "/console")
    enter_key(page, keyed_server.keys.ops)
    page.wait_for_selector("#aliases-table tbody tr")
    page.wait_for_selector("text=This key lacks the metrics scope")
    assert page.locator("#key-dialog[open]").count() == 0
    assert page.get_attribute("#chart-tokens", "data-points") is None


def test_the_console_charts_follow_live_traffic(keyed_server, page):
    _open_console(keyed_server, page)
    page.wait_for_function("() => Number(document.getElementById('chart-tokens')"
                           ".dataset.points) >= 2")
    assert page.evaluate("() => JSON.parse(document.getElementById('chart-tokens')"
                         ".dataset.last)") == [0, 0]
    stop = threading.Event()
    worker = threading.Thread(target=_traffic, args=(keyed_server, stop), daemon=True)
    worker.start()
    try:
        page.wait_for_function("() => JSON.parse(document.getElementById('chart-tokens')"
                               ".dataset.last)[0] > 0", timeout=30_000)
        page.wait_for_function("() => JSON.parse(document.getElementById('chart-ttft')"
                               ".dataset.last)[0] > 0", timeout=30_000)
        page.wait_for_function("() => JSON.parse(document.getElementById('chart-requests')"
                               ".dataset.last)[0] >= 1", timeout=30_000)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert page.inner_text("#chart-tokens output").startswith("generated ")
    # Usage by key, read from /v1/usage, shows bob's traffic on the live alias's model.
    page.wait_for_function("() => [...document.querySelectorAll('#usage-table tbody tr')]"
                           ".some(r => r.cells[2].textContent.startsWith('chat'))",
                           timeout=15_000)
    assert page.errors == []


def test_the_swap_button_moves_an_alias_and_rollback_moves_it_back(keyed_server, page):
    assert aliases(keyed_server)["live"] == {"chat@1": 100.0} or \
        list(aliases(keyed_server)["live"]) == ["chat@1"]
    _open_console(keyed_server, page, "")
    row = page.locator("#aliases-table tbody tr", has_text="live")
    page.select_option("#swap-live", "chat@2")
    page.click("button[aria-label='Swap live']")
    row.get_by_text("chat@2 (100%)").wait_for(timeout=120_000)
    assert list(aliases(keyed_server)["live"]) == ["chat@2"]
    assert page.inner_text("#status") == "live now points at chat@2."
    page.click("button[aria-label='Roll back live']")
    row.get_by_text("chat@1 (100%)").wait_for(timeout=120_000)
    assert list(aliases(keyed_server)["live"]) == ["chat@1"]
    assert page.errors == []


@pytest.mark.parametrize("name,viewport", [("desktop", {"width": 1280, "height": 900}),
                                           ("phone", PHONE)])
def test_console_screenshots_and_accessibility(keyed_server, browser, artifacts, name,
                                               viewport):
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    _open_console(keyed_server, page)
    stop = threading.Event()
    worker = threading.Thread(target=_traffic, args=(keyed_server, stop), daemon=True)
    worker.start()
    try:  # a few seconds of traffic on the charts
        page.wait_for_function("() => Number(document.getElementById('chart-tokens')"
                               ".dataset.points) >= 12", timeout=30_000)
    finally:
        stop.set()
        worker.join(timeout=60)
    page.screenshot(path=str(artifacts / f"console-{name}.png"), full_page=True)
    assert fits_width(page), name
    violations = axe_violations(page)
    assert violations == [], describe(violations)
    context.close()
