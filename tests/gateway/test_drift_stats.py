"""Drift statistics and the monitor's windows on synthetic streams (pure statistics, fast):
a switch of distribution is flagged within a stated number of requests on each feature, and
the same distribution on both sides raises no alarm in at least 95 % of 20 seeds."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from cormorant.gateway.telemetry.drift import DriftConfig, DriftMonitor, load_reference
from cormorant.gateway.telemetry.drift_features import (FeatureRow, char_class, char_mix,
                                                        dominant_script, features, is_refusal)
from cormorant.gateway.telemetry.drift_stats import centroid_shift, chi2_quantile, js, ks, psi
from cormorant.gateway.telemetry.request_log import TelemetryConfigError, build_telemetry

LABELS = ("tiny", "1")
CONFIG = DriftConfig(window=200, reference_size=200, min_requests=50)
LATIN = "abcdefghijklmnopqrstuvwxyz"
CYRILLIC = "абвгдежзиклмнопрстуфхцчшщыэюя"
# Requests after a switch within which each feature is flagged, with 200-request windows
# (measured over 10 seeds: worst 46, 22, 42, 10, 108 and 32).
FLAGGED_WITHIN = {"prompt_tokens": 50, "prompt_script": 30, "prompt_charclass": 50,
                  "output_tokens": 15, "refusal": 120, "mean_logprob": 40}


def _words(rng: random.Random, alphabet: str, count: int) -> str:
    return " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 8)))
                    for _ in range(count))


def synthetic_row(rng: random.Random, *, long_prompts: bool = False, cyrillic: bool = False,
                  short_outputs: bool = False, refusing: bool = False,
                  unsure: bool = False) -> FeatureRow:
    """One request of a synthetic stream; each flag switches one feature's distribution."""
    num_words = max(1, int(rng.lognormvariate(3.0 if not long_prompts else 4.2, 0.4)))
    alphabet = CYRILLIC if cyrillic and rng.random() < 0.7 else LATIN
    prompt = _words(rng, alphabet, num_words) + (" 42." if rng.random() < 0.3 else "?")
    output_tokens = rng.randint(5, 20) if short_outputs else rng.randint(20, 64)
    output = ("I'm sorry, I can't help with that." if rng.random() < (0.3 if refusing else 0.02)
              else _words(rng, LATIN, output_tokens // 2))
    finish = "length" if output_tokens == 64 else "stop"
    return features(prompt=prompt, output=output, prompt_tokens=int(num_words * 1.3),
                    output_tokens=output_tokens, finish_reason=finish,
                    mean_logprob=rng.gauss(-1.6 if unsure else -1.0, 0.3))


def _drifting(monitor: DriftMonitor) -> set[str]:
    return {name for name, scores in monitor.scores(LABELS).items()
            if any(s.is_drifting for s in scores)}


def test_statistics_see_a_shift_and_ignore_noise():
    rng = np.random.default_rng(0)
    same_a, same_b = rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    shifted = rng.normal(1, 1, 400)
    assert not psi(same_a, same_b).is_drifting and psi(same_a, shifted).is_drifting
    assert not ks(same_a, same_b).is_drifting and ks(same_a, shifted).is_drifting
    assert ks(same_a, shifted).value > 0.3
    mix = {"stop": 80, "length": 20}
    assert not js(mix, {"stop": 78, "length": 22}, 100, 100).is_drifting
    assert js(mix, {"stop": 30, "length": 70}, 100, 100).is_drifting
    # Sample-size aware: the same small gap passes with few rows and alarms with very many.
    assert not js({"a": 55, "b": 45}, {"a": 45, "b": 55}, 100, 100).is_drifting
    assert js({"a": 55, "b": 45}, {"a": 45, "b": 55}, 100_000, 100_000).value > 0.007
    assert psi(same_a[:60], same_b[:60]).threshold > psi(same_a, same_b).threshold
    # Wilson-Hilferty against the table: chi2(0.999, 9) = 27.88, chi2(0.95, 1) = 3.84.
    assert chi2_quantile(0.999, 9) == pytest.approx(27.88, rel=0.02)
    assert chi2_quantile(0.95, 1) == pytest.approx(3.84, rel=0.03)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_centroid_shift_of_embeddings():
    """Unit vectors around a topic direction: the same topic on both sides stays under the
    threshold in 20 seeds of 20, for isotropic and for lopsided noise; another topic is over."""
    topic, other = np.random.default_rng(0).normal(0, 1, (2, 384))
    scale = np.concatenate([np.full(5, 8.0), np.full(379, 0.3)])  # a few dominant directions
    for seed in range(20):
        rng = np.random.default_rng(seed)
        for noise in (1.0, scale):
            a = _unit(topic * 0.3 + rng.normal(0, 1, (150, 384)) * noise)
            b = _unit(topic * 0.3 + rng.normal(0, 1, (150, 384)) * noise)
            assert not centroid_shift(a, b).is_drifting, seed
    rng = np.random.default_rng(99)
    a = _unit(topic * 0.3 + rng.normal(0, 1, (60, 384)))
    b = _unit(other * 0.3 + rng.normal(0, 1, (60, 384)))
    assert centroid_shift(a, b).is_drifting


def test_features_of_text():
    assert [char_class(c) for c in "aЖ中ع7. é"] == ["latin", "cyrillic", "cjk", "arabic",
                                                    "digit", "punct", "space", "latin"]
    assert dominant_script(char_mix("Привет, как дела? ok")) == "cyrillic"
    assert dominant_script(char_mix("12 + 30 = 42")) == "none"
    assert is_refusal("I’m sorry, but I cannot do that")
    assert not is_refusal("Sure: sorry is a word")
    row = features(prompt="日本語のテキスト", output="  ", finish_reason="stop")
    assert row.categorical == {"finish_reason": "stop", "empty_output": "yes", "refusal": "no",
                               "prompt_script": "cjk"}
    assert "日本" not in json.dumps(row.as_dict(), ensure_ascii=False)  # no text is kept


@pytest.mark.parametrize("switch, features_moved", [
    ({"long_prompts": True}, ["prompt_tokens"]),
    ({"cyrillic": True}, ["prompt_script", "prompt_charclass"]),
    ({"short_outputs": True}, ["output_tokens"]),
    ({"refusing": True}, ["refusal"]),
    ({"unsure": True}, ["mean_logprob"]),
])
def test_a_switch_is_flagged_within_the_stated_requests(switch, features_moved):
    for seed in range(5):
        rng = random.Random(seed)
        monitor = DriftMonitor(CONFIG)
        monitor.observe(LABELS, [synthetic_row(rng) for _ in range(300)])
        assert not _drifting(monitor)
        flagged_at: dict[str, int] = {}
        for i in range(1, 151):
            monitor.observe(LABELS, [synthetic_row(rng, **switch)])
            for name in _drifting(monitor):
                flagged_at.setdefault(name, i)
            if all(name in flagged_at for name in features_moved):
                break
        for name in features_moved:
            assert flagged_at.get(name, 999) <= FLAGGED_WITHIN[name], (seed, flagged_at)


def test_same_distribution_raises_no_alarm_in_95_percent_of_20_seeds():
    quiet = 0
    for seed in range(20):
        rng = random.Random(1000 + seed)
        monitor = DriftMonitor(CONFIG)
        alarms: set[str] = set()
        for _ in range(8):  # checked every 50 requests over 600: 8 looks at the window
            monitor.observe(LABELS, [synthetic_row(rng) for _ in range(50)])
            alarms |= _drifting(monitor)
        quiet += not alarms
    assert quiet >= 19


def test_canary_with_other_answers_is_flagged_and_pinned_reference_is_used(tmp_path):
    rng = random.Random(7)
    lines = [dict(synthetic_row(rng).as_dict(), model="tiny") for _ in range(200)]
    lines.append({"prompt": "Hello there, how are you?", "output": "Fine."})
    path = tmp_path / "reference.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    monitor = DriftMonitor(DriftConfig(window=200, reference_size=200, min_requests=50,
                                       reference_file=str(path)))
    assert len(load_reference(path)) == 201
    base, canary = ("tiny", "1"), ("tiny", "2")
    for _ in range(150):
        monitor.observe(base, [synthetic_row(rng)])
        monitor.observe(canary, [synthetic_row(rng, short_outputs=True)])
    report = monitor.report([("tiny-prod", base, canary)])
    versions = {m["model_version"]: m for m in report["models"]}
    assert versions["1"]["reference"] == {"source": "pinned", "num_rows": 201}
    assert versions["1"]["drifting"] == [] and "output_tokens" in versions["2"]["drifting"]
    differing = report["canaries"][0]["differing"]
    assert "output_tokens" in differing and "prompt_tokens" not in differing
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_tokens": "many"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: prompt_tokens must be a number"):
        load_reference(bad)
    with pytest.raises(TelemetryConfigError, match="drift reference: .*bad.jsonl:1"):
        build_telemetry(512, usage_db=":memory:", drift=DriftConfig(reference_file=str(bad)))
