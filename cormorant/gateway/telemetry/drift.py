"""Drift monitoring: per model version, a reference and a rolling window of request features.

Each finished request adds its FeatureRows (gateway.telemetry.drift_features: numbers and
categories, never text) to its model version's windows. The reference is the version's first
`reference_size` rows, or a pinned JSONL file (`load_reference`); the current window holds the
latest `window` rows. `DriftMonitor.report()` scores every feature, current against reference
(gateway.telemetry.drift_stats: PSI and KS for numbers, Jensen-Shannon for categories and
mixes), and compares canary versions with their baseline's current window; `DriftCollector`
exports the same scores as `cormorant:drift_*` gauges at scrape time.
A feature is scored only once both sides hold `min_requests` rows with it.
With an `embed` function (the server's: a served encoder), every `embed_every`-th prompt is
also embedded, one at a time by a background task, into a `prompt_embedding` window scored
by centroid shift (a pinned file gives no vectors: the version's first embedded prompts are
its reference).
Imports numpy (through drift_stats), prometheus_client and plain frontend types.
"""
from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily

from cormorant.frontend.outputs import RequestOutput
from cormorant.gateway.telemetry.drift_features import (CATEGORICAL, MIXES, NUMERIC, FeatureRow,
                                                        features)
from cormorant.gateway.telemetry.drift_stats import Score, centroid_shift, js, ks, psi

logger = logging.getLogger("cormorant.gateway")

MAX_PROMPT_DECODE_TOKENS = 1024  # prompt tokens decoded for the script features
MAX_REFERENCE_LINES = 100_000
MAX_EMBED_QUEUE = 256  # prompts waiting for the encoder; more are skipped
EMBEDDING = "prompt_embedding"
Labels = tuple[str, str]  # (model name, version), as the metrics label them
Embed = Callable[[str], Awaitable[list[float]]]


@dataclass(frozen=True)
class DriftConfig:
    window: int = 500  # rows in each version's rolling current window
    reference_size: int = 500  # the first rows of a version form its reference...
    reference_file: str | None = None  # ...unless a pinned JSONL file gives it
    min_requests: int = 50  # fewer rows on either side: no score
    alpha: float = 1e-3  # chance of a false alarm per feature and statistic, at most
    embed_every: int = 1  # with an encoder: embed every k-th prompt

    def __post_init__(self) -> None:
        if self.window < 2 or self.reference_size < 2 or self.min_requests < 2:
            raise ValueError("drift window, reference size and min requests must be >= 2")
        if self.embed_every < 1:
            raise ValueError("drift embed_every must be >= 1")
        if not 0.0 < self.alpha < 0.5:
            raise ValueError("drift alpha must be in (0, 0.5)")


@dataclass
class PinnedRow:
    model: str | None  # name or name@version it applies to; None: every model
    row: FeatureRow


def load_reference(path: str | Path) -> list[PinnedRow]:
    """A pinned reference: one JSON object per line, feature values and/or `prompt`/`output`
    text (turned into features and dropped) and an optional `model`. ValueError names the
    line that is wrong."""
    rows: list[PinnedRow] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if len(rows) >= MAX_REFERENCE_LINES:
                raise ValueError(f"{path}: more than {MAX_REFERENCE_LINES} lines")
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                model = data.get("model")
                rows.append(PinnedRow(model if isinstance(model, str) else None,
                                      FeatureRow.from_dict(data)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
    if not rows:
        raise ValueError(f"{path}: no reference lines")
    return rows


def compare(reference: Sequence[FeatureRow], current: Sequence[FeatureRow], min_requests: int,
            alpha: float) -> dict[str, list[Score]]:
    """Every feature both sides have at least `min_requests` rows of, scored."""
    scores: dict[str, list[Score]] = {}
    for name in NUMERIC:
        ref = [r.numeric[name] for r in reference if name in r.numeric]
        cur = [r.numeric[name] for r in current if name in r.numeric]
        if min(len(ref), len(cur)) >= min_requests:
            scores[name] = [psi(ref, cur, alpha), ks(ref, cur, alpha)]
    for name in CATEGORICAL:
        ref_counts = Counter(r.categorical[name] for r in reference if name in r.categorical)
        cur_counts = Counter(r.categorical[name] for r in current if name in r.categorical)
        n, m = sum(ref_counts.values()), sum(cur_counts.values())
        if min(n, m) >= min_requests:
            scores[name] = [js(ref_counts, cur_counts, n, m, alpha)]
    for name in MIXES:
        ref_mix, n = _summed(r.mixes.get(name) for r in reference)
        cur_mix, m = _summed(r.mixes.get(name) for r in current)
        if min(n, m) >= min_requests:
            scores[name] = [js(ref_mix, cur_mix, n, m, alpha)]
    return scores


def _summed(mixes: Iterable[dict[str, float] | None]) -> tuple[Counter, int]:
    total: Counter = Counter()
    count = 0
    for mix in mixes:
        if mix:
            total.update(mix)
            count += 1
    return total, count


def summary(rows: Sequence[FeatureRow]) -> dict:
    """Means of the numeric features and shares of the categories: what the window looks like."""
    out: dict = {}
    for name in NUMERIC:
        values = [r.numeric[name] for r in rows if name in r.numeric]
        if values:
            out[f"{name}_mean"] = round(sum(values) / len(values), 4)
    for name in CATEGORICAL:
        counts = Counter(r.categorical[name] for r in rows if name in r.categorical)
        total = sum(counts.values())
        if total:
            out[name] = {k: round(v / total, 4) for k, v in sorted(counts.items())}
    return out


def _scores_dict(scores: dict[str, list[Score]]) -> dict:
    return {name: [s.as_dict() for s in found] for name, found in scores.items()}


@dataclass
class VersionWindows:
    """One model version's reference and current rows."""

    reference: list[FeatureRow]
    is_pinned: bool
    current: deque = field(default_factory=deque)
    num_seen: int = 0
    reference_vectors: list[list[float]] = field(default_factory=list)
    current_vectors: deque = field(default_factory=deque)
    num_embedded: int = 0


class DriftMonitor:
    """Windows per model version and the report over them. Runs on the event loop."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()
        self.pinned = load_reference(self.config.reference_file) \
            if self.config.reference_file else []
        self.versions: dict[Labels, VersionWindows] = {}
        self.embed: Embed | None = None  # set by the server when an encoder is named
        self._num_prompts = 0
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def _windows(self, labels: Labels) -> VersionWindows:
        found = self.versions.get(labels)
        if found is None:
            name, version = labels
            keys = {None, name, f"{name}@{version}"}
            pinned = [p.row for p in self.pinned if p.model in keys]
            found = VersionWindows(pinned, bool(pinned), deque(maxlen=self.config.window),
                                   current_vectors=deque(maxlen=self.config.window))
            self.versions[labels] = found
        return found

    def observe(self, labels: Labels, rows: Iterable[FeatureRow]) -> None:
        windows = self._windows(labels)
        for row in rows:
            windows.num_seen += 1
            if not windows.is_pinned and len(windows.reference) < self.config.reference_size:
                windows.reference.append(row)
            windows.current.append(row)

    def observe_outputs(self, labels: Labels, outputs: Iterable[RequestOutput],
                        decode: Callable[[list[int]], str] | None) -> None:
        """The rows of one HTTP request's finished engine outputs (one row per choice)."""
        rows, prompts = rows_from_outputs(outputs, decode)
        self.observe(labels, rows)
        for prompt in prompts if self.embed is not None else ():
            self._num_prompts += 1
            if self._num_prompts % self.config.embed_every == 0:
                self._enqueue(labels, prompt)

    def _enqueue(self, labels: Labels, prompt: str) -> None:
        if self._worker is None:
            self._queue = asyncio.Queue(MAX_EMBED_QUEUE)
            self._worker = asyncio.get_running_loop().create_task(self._embed_queued())
        try:
            self._queue.put_nowait((labels, prompt))  # type: ignore[union-attr]
        except asyncio.QueueFull:
            pass  # the encoder is behind: this prompt goes unsampled

    async def _embed_queued(self) -> None:
        while True:
            labels, prompt = await self._queue.get()  # type: ignore[union-attr]
            try:
                vector = await self.embed(prompt)  # type: ignore[misc]
            except Exception as exc:  # an encoder unloaded or failing costs a sample, no more
                logger.debug("drift: embedding a prompt failed: %s", exc)
                continue
            windows = self._windows(labels)
            windows.num_embedded += 1
            if len(windows.reference_vectors) < self.config.reference_size:
                windows.reference_vectors.append(vector)
            windows.current_vectors.append(vector)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()

    def _compare(self, reference: Sequence[FeatureRow], current: Sequence[FeatureRow],
                 ref_vectors: Sequence, cur_vectors: Sequence) -> dict[str, list[Score]]:
        cfg = self.config
        scores = compare(reference, current, cfg.min_requests, cfg.alpha)
        if min(len(ref_vectors), len(cur_vectors)) >= cfg.min_requests:
            scores[EMBEDDING] = [centroid_shift(ref_vectors, cur_vectors, cfg.alpha)]
        return scores

    def scores(self, labels: Labels) -> dict[str, list[Score]]:
        w = self.versions[labels]
        return self._compare(w.reference, list(w.current), w.reference_vectors,
                             list(w.current_vectors))

    def canary_scores(self, baseline: Labels, canary: Labels) -> dict[str, list[Score]]:
        """The canary's current window against the baseline's: does the new version answer
        differently to the same traffic?"""
        if baseline not in self.versions or canary not in self.versions:
            return {}
        base, new = self.versions[baseline], self.versions[canary]
        return self._compare(list(base.current), list(new.current), list(base.current_vectors),
                             list(new.current_vectors))

    def report(self, canaries: Sequence[tuple[str, Labels, Labels]] = ()) -> dict:
        """The whole state as JSON-ready data. canaries: (alias, baseline, canary) labels."""
        models = []
        for labels, w in self.versions.items():
            scores = self.scores(labels)
            models.append({
                "model_name": labels[0], "model_version": labels[1],
                "reference": {"source": "pinned" if w.is_pinned else "first_requests",
                              "num_rows": len(w.reference)},
                "num_current": len(w.current), "num_seen": w.num_seen,
                "embeddings": {"reference": len(w.reference_vectors),
                               "current": len(w.current_vectors),
                               "num_embedded": w.num_embedded},
                "drifting": sorted(n for n, s in scores.items() if any(x.is_drifting for x in s)),
                "features": _scores_dict(scores), "current": summary(list(w.current)),
                "reference_summary": summary(w.reference)})
        pairs = []
        for alias, baseline, canary in canaries:
            scores = self.canary_scores(baseline, canary)
            pairs.append({"alias": alias, "baseline": list(baseline), "canary": list(canary),
                          "differing": sorted(n for n, s in scores.items()
                                              if any(x.is_drifting for x in s)),
                          "features": _scores_dict(scores)})
        cfg = self.config
        return {"config": {"window": cfg.window, "reference_size": cfg.reference_size,
                           "reference_file": bool(cfg.reference_file),
                           "min_requests": cfg.min_requests, "alpha": cfg.alpha},
                "models": models, "canaries": pairs}


def rows_from_outputs(outputs: Iterable[RequestOutput], decode: Callable[[list[int]], str] | None
                      ) -> tuple[list[FeatureRow], list[str]]:
    """The rows of finished outputs (one per choice) and their prompts' text (one per prompt,
    for the encoder; never stored)."""
    rows, prompts = [], []
    for out in outputs:
        if out.error is not None or not out.finished:
            continue
        prompt = decode(out.prompt_token_ids[:MAX_PROMPT_DECODE_TOKENS]) if decode else None
        if prompt:
            prompts.append(prompt)
        for o in out.outputs:
            mean_logprob = (o.cumulative_logprob / len(o.token_ids)
                            if o.cumulative_logprob is not None and o.token_ids else None)
            rows.append(features(prompt=prompt, output=o.text,
                                 prompt_tokens=len(out.prompt_token_ids),
                                 output_tokens=len(o.token_ids),
                                 finish_reason=o.finish_reason, mean_logprob=mean_logprob))
    return rows, prompts


class DriftCollector:
    """`cormorant:drift_*` gauges, computed from the monitor when Prometheus scrapes."""

    def __init__(self, monitor: DriftMonitor,
                 canaries: Callable[[], Sequence[tuple[str, Labels, Labels]]] = tuple) -> None:
        self.monitor = monitor
        self.canaries = canaries  # set by the server: the registry's current splits

    def collect(self):
        labels = ["model_name", "model_version", "feature", "statistic"]
        score = GaugeMetricFamily("cormorant:drift_score", "Drift of a feature, current window "
                                  "against the reference (PSI, KS distance, JS bits or centroid "
                                  "distance).", labels=labels)
        threshold = GaugeMetricFamily("cormorant:drift_threshold", "The score above which the "
                                      "feature counts as drifting (sample-size aware).",
                                      labels=labels)
        alarm = GaugeMetricFamily("cormorant:drift_alarm", "1 when the score is over its "
                                  "threshold.", labels=labels)
        rows = GaugeMetricFamily("cormorant:drift_window_requests", "Rows in a drift window.",
                                 labels=["model_name", "model_version", "window"])
        canary_labels = ["alias", "baseline_version", "canary_version", "feature", "statistic"]
        canary = GaugeMetricFamily("cormorant:drift_canary_score", "A canary's feature against "
                                   "its baseline's, both current windows.", labels=canary_labels)
        canary_alarm = GaugeMetricFamily("cormorant:drift_canary_alarm", "1 when a canary "
                                         "answers differently on a feature.", labels=canary_labels)
        for version, w in list(self.monitor.versions.items()):
            rows.add_metric([*version, "reference"], len(w.reference))
            rows.add_metric([*version, "current"], len(w.current))
            for name, found in self.monitor.scores(version).items():
                for s in found:
                    values = [*version, name, s.statistic]
                    score.add_metric(values, s.value)
                    threshold.add_metric(values, s.threshold)
                    alarm.add_metric(values, float(s.is_drifting))
        for alias, baseline, new in self.canaries():
            for name, found in self.monitor.canary_scores(baseline, new).items():
                for s in found:
                    values = [alias, baseline[1], new[1], name, s.statistic]
                    canary.add_metric(values, s.value)
                    canary_alarm.add_metric(values, float(s.is_drifting))
        return [score, threshold, alarm, rows, canary, canary_alarm]
