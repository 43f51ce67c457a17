"""Helpers for the browser tests: driving the pages the way a user does, reading the server's
state over HTTP, and axe-core (vendored under tests/web/vendor, MPL-2.0) run in the page."""
from __future__ import annotations

import json
import time
from pathlib import Path

import httpx

AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def wait_models(page) -> list[str]:
    """The playground's model picker, once it has been filled from /v1/models."""
    page.wait_for_function("() => document.getElementById('model').options.length > 0")
    return page.eval_on_selector_all("#model option", "els => els.map(e => e.value)")


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def wait_idle(page, timeout: float = 60_000) -> None:
    """Until the page has finished the answer it was streaming."""
    page.wait_for_function("() => document.body.dataset.state === 'idle' && "
                           "document.querySelector('.msg.assistant:last-child .meta')"
                           "?.textContent.length > 0", timeout=timeout)


def last_answer(page) -> str:
    return page.inner_text(".msg.assistant:last-child .body")


def enter_key(page, key: str) -> None:
    """Type a key into the key dialog (which must be open) and save it."""
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", key)
    page.click("#key-save")


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def wait_blocks_free(url: str, timeout: float = 10.0) -> dict:
    """/health once no request runs and every KV block is free again (or the last seen)."""
    deadline = time.monotonic() + timeout
    while True:
        body = health(url)
        engine = body["engine"]
        idle = engine["num_running"] == 0 and engine["num_waiting"] == 0
        if idle and engine["num_free_blocks"] == engine["num_total_blocks"]:
            return body
        if time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def metric(url: str, name: str, key: str | None = None, **labels: str) -> float:
    """The sum of one metric's samples whose labels include `labels`."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    total = 0.0
    for line in httpx.get(url + "/metrics", headers=headers, timeout=10).text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def axe_violations(page, impacts=("serious", "critical")) -> list[dict]:
    """axe-core's WCAG 2 A/AA checks of the current page; the violations of these impacts.
    Injected through the DevTools protocol (page.evaluate), so the page's CSP stays on."""
    page.evaluate(AXE.read_text())
    result = page.evaluate("""async () => {
        const r = await axe.run(document, {runOnly: {type: 'tag',
            values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                       nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}));
    }""")
    return [v for v in result if v["impact"] in impacts]


def fits_width(page) -> bool:
    """No horizontal scrolling of the page itself (what scrolls is inside a region)."""
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")


def describe(violations: list[dict]) -> str:
    return json.dumps(violations, indent=1)
