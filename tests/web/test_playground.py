"""The playground in real headless Chromium against a real server on a tiny model: streamed
text, the request it sends, stopping a stream (the server aborts it and frees its KV blocks),
model text that is never HTML, screenshots and an axe-core check."""
from __future__ import annotations

import json

from web_helpers import (PHONE, axe_violations, describe, fits_width, last_answer, metric,
                         send, wait_blocks_free, wait_idle, wait_models)


def test_a_message_streams_its_answer_into_the_page(open_server, page):
    page.goto(open_server.url + "/")
    assert wait_models(page) == [open_server.model]
    page.fill("#max_tokens", "300")
    page.check("#ignore_eos")
    send(page, "Hello there")
    assert page.inner_text(".msg.user .body") == "Hello there"
    # Text is on the page while the answer is still streaming, and more arrives after.
    handle = page.wait_for_function(
        "() => document.body.dataset.state === 'streaming' && "
        "document.querySelector('.msg.assistant .body').textContent.length > 0 && "
        "document.querySelector('.msg.assistant .body').textContent.length")
    first_seen = handle.json_value()
    wait_idle(page)
    assert len(last_answer(page)) > first_seen
    meta = page.inner_text(".msg.assistant .meta")
    assert meta.startswith("300 tokens · TTFT ") and "tokens/s" in meta, meta
    # The conversation is kept in the browser: a reload shows it again.
    page.reload()
    assert page.inner_text(".msg.user .body") == "Hello there"
    assert page.inner_text(".msg.assistant .meta") == meta
    assert page.errors == []


def test_stop_ends_the_stream_and_the_server_aborts_it(open_server, page):
    url = open_server.url
    aborted = metric(url, "vllm:request_success_total", finished_reason="abort")
    generated = metric(url, "vllm:generation_tokens_total")
    page.goto(url + "/")
    wait_models(page)
    page.fill("#max_tokens", "450")
    page.check("#ignore_eos")
    send(page, "Tell me a long story")
    page.wait_for_function("() => document.querySelector('.msg.assistant .body')"
                           ".textContent.length > 0")
    running = open_server.app.state.cormorant.stats().num_running
    page.click("#stop-button")
    wait_idle(page)
    assert "stopped" in page.inner_text(".msg.assistant .meta")
    body = wait_blocks_free(url)
    engine = body["engine"]
    assert running == 1
    assert (engine["num_running"], engine["num_free_blocks"]) == (0, engine["num_total_blocks"])
    assert metric(url, "vllm:request_success_total", finished_reason="abort") == aborted + 1
    assert metric(url, "vllm:generation_tokens_total") - generated < 450


PAYLOAD = ('<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">\n'
           "**bold** and `<b>code</b>`")


def _rewrite_cached_answers(server, text: str) -> int:
    """Every answer in the server's in-memory response cache now says `text`: the next
    identical request is answered with it, as a model's answer, by the server."""
    backend = server.app.state.cormorant.response_cache.backend
    count = 0
    for key, (expiry, raw) in list(backend._entries.items()):
        entry = json.loads(raw)
        for choice in entry["choices"]:
            choice["message"]["content"] = text
        backend._entries[key] = (expiry, json.dumps(entry).encode())
        count += 1
    return count


def test_an_answer_with_html_in_it_is_shown_as_text(open_server, page):
    page.goto(open_server.url + "/")
    wait_models(page)
    page.fill("#temperature", "0")  # deterministic: the server caches the answer
    page.fill("#max_tokens", "8")
    page.uncheck("#ignore_eos")
    send(page, "Say something with markup")
    wait_idle(page)
    assert _rewrite_cached_answers(open_server, PAYLOAD) >= 1
    cache_headers = []
    page.on("response", lambda r: r.url.endswith("/v1/chat/completions")
            and cache_headers.append(r.headers.get("x-cache")))
    page.click("#clear")
    send(page, "Say something with markup")
    wait_idle(page)
    assert cache_headers == ["hit"]
    body = page.locator(".msg.assistant .body")
    text = body.inner_text()
    assert '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">' in text
    assert body.locator("script, img").count() == 0
    assert body.locator("strong").inner_text() == "bold"
    assert body.locator("code").inner_text() == "<b>code</b>"
    assert page.evaluate("() => window.__pwned") is None
    assert page.errors == []


def test_playground_screenshots_and_accessibility(open_server, browser, artifacts):
    for name, viewport in (("desktop", {"width": 1280, "height": 800}), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        page.goto(open_server.url + "/playground")
        wait_models(page)
        page.fill("#system", "You are a helpful assistant.")
        page.fill("#max_tokens", "40")
        send(page, "Write a haiku about **cormorants**.")
        wait_idle(page)
        page.screenshot(path=str(artifacts / f"playground-{name}.png"))
        assert fits_width(page), name
        violations = axe_violations(page)
        assert violations == [], describe(violations)
        if name == "phone":  # the check can fail: an unlabelled field is reported
            page.evaluate("() => document.querySelector('aside').append("
                          "Object.assign(document.createElement('select'), {id: 'bare'}))")
            assert "select-name" in {v["id"] for v in axe_violations(page)}
            page.evaluate("() => document.getElementById('bare').remove()")
        # Keyboard only: the first Tab reaches the skip link, which leads to the message box;
        # typing there and Enter sends.
        page.reload()  # the conversation stays (local storage); focus starts at the top
        wait_models(page)
        page.keyboard.press("Tab")
        assert page.evaluate("() => document.activeElement.className") == "skip"
        page.keyboard.press("Enter")
        assert page.evaluate("() => document.activeElement.id") == "prompt"
        page.keyboard.type("And another")
        page.keyboard.press("Enter")
        wait_idle(page)
        assert page.locator(".msg.user").count() == 2
        context.close()


def test_a_refused_request_shows_the_servers_reason(open_server, page):
    page.goto(open_server.url + "/")
    wait_models(page)
    page.select_option("#format", "json_schema")
    # uniqueItems is a JSON-schema keyword the grammar engine refuses (docs/structured-output.md)
    page.fill("#schema", '{"type": "array", "uniqueItems": true}')
    requests = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and requests.append(r))
    send(page, "Give me JSON")
    wait_idle(page)
    sent = requests[0].post_data_json["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"]["type"] == "array"
    meta = page.inner_text(".msg.assistant .meta")
    assert "error: invalid json constraint: Unimplemented keys" in meta, meta
    assert page.inner_text("#status").startswith("error: ")
