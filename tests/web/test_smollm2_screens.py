"""The playground on the real SmolLM2: a real answer (Markdown and code rendered) in the
screenshots, at desktop and phone width, that docs/ and the README show; axe-core at both."""
from __future__ import annotations

import pytest

from web_helpers import (DESKTOP, PHONE, axe_violations, describe, fits_width, last_answer,
                         send, wait_idle, wait_models)

pytestmark = pytest.mark.slow

QUESTION = "Write a Python function that adds two numbers, with a short explanation."


def test_playground_on_smollm2(smollm2_server, page, artifacts):
    page.goto(smollm2_server.url + "/")
    wait_models(page)
    page.fill("#system", "You are a concise assistant.")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "96")
    send(page, QUESTION)
    wait_idle(page, timeout=180_000)
    answer = last_answer(page)
    assert answer.strip() and "error" not in page.inner_text(".msg.assistant .meta")
    # Its fenced code block is rendered as code: no fence is shown as text.
    assert "```" not in answer and page.locator(".msg.assistant pre.code").count() >= 1
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=str(artifacts / f"playground-smollm2-{name}.png"))
        assert fits_width(page), name
        violations = axe_violations(page)
        assert violations == [], describe(violations)
    assert page.errors == []
