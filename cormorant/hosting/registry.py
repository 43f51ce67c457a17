"""The model registry: known model versions, their sources, and which one answers a `model`.

A registry file (TOML, or JSON with the same shape) lists models as name@version with their
source, engine settings and fallbacks, and aliases that route a name to one version or to
weighted versions (a canary). Sources are ids resolved under configured model roots, never
paths a client chooses: an absolute path, `..`, a symlink out of the root or a missing file
is refused (`resolve_source`). `builtin:smollm2` is the embedded default model.

Routing (`Registry.route`): an alias first; then an exact `name@version`; then a bare model
name, which means its most recently registered version. A split picks a version by weight;
with a `user` the pick is a hash of (alias, user), so one user stays on one version while the
weights do not change. Placement: an entry's `device`, or `devices = [K, K+1, ...]`
(consecutive CUDA devices: one engine over them, tensor-parallel), so a large model on two
GPUs and a small one on a third serve side by side; under `cormorant serve --ray`, an entry's
`ray = {replicas = 2, ...}` sizes its own replicas (RAY_OPTIONS). Plain Python, no engine or
HTTP: the model pool and the server build on it. Imports the stdlib (tomllib on 3.11+, tomli before) and cormorant.engine_args.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cormorant.engine_args import BY_NAME, EngineArgError, check_value, names_for

BUILTIN_PREFIX = "builtin:"
KINDS = ("generate", "embed")
LOAD_POLICIES = ("startup", "on_demand")
ENGINE_OPTIONS = names_for("registry")  # cormorant.engine_args: the one table
LIMIT_OPTIONS = ("max_waiting_requests", "max_waiting_prompt_tokens", "max_queue_delay_s")
# Per-version replica settings under `cormorant serve --ray` (scaleout.options); else unused.
RAY_OPTIONS = ("replicas", "min_replicas", "max_replicas", "gpus_per_replica",
               "cpus_per_replica", "target_ongoing_requests")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


class RegistryError(ValueError):
    """A registry file or an admin change that cannot be honoured; the message says why."""


def parse_bytes(value: Any) -> int | None:
    """"6GiB", "512MB", 1048576 -> bytes; None stays None."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise RegistryError(f"not a size: {value!r} (write e.g. 512MiB or 6GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_devices(value: Any, where: str) -> tuple[str, int]:
    """`devices = [K, K+1, ...]` -> ("cuda:K", how many): the first device and the
    tensor-parallel size of one engine over consecutive CUDA devices."""
    if not (isinstance(value, list) and value and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)):
        raise RegistryError(f"{where}: devices must be a list of CUDA device numbers, "
                            f"e.g. [0, 1] (got {str(value)[:64]!r})")
    if value != list(range(value[0], value[0] + len(value))):
        raise RegistryError(f"{where}: devices must be consecutive and ascending, e.g. [2, 3] "
                            f"(got {value})")
    return f"cuda:{value[0]}", len(value)


def check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or "@" in value:
        raise RegistryError(f"{what} must be 1-128 characters of letters, digits and . _ : -"
                            f" (got {str(value)[:64]!r})")
    return value


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: str
    source: str  # an id under a model root, or builtin:NAME
    kind: str = "generate"
    dtype: str = "auto"
    device: str = "auto"
    load: str = "startup"
    engine: dict[str, Any] = field(default_factory=dict)  # EngineConfig knobs (ENGINE_OPTIONS)
    limits: dict[str, Any] = field(default_factory=dict)  # admission knobs (LIMIT_OPTIONS)
    fallbacks: tuple[str, ...] = ()  # model names, aliases or name@version, tried in order
    memory_bytes: int | None = None  # expected footprint before the first load
    ray: dict[str, Any] = field(default_factory=dict)  # replica settings (RAY_OPTIONS)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        if not isinstance(data, dict):
            raise RegistryError("a model entry must be a table")
        known = {"name", "version", "source", "kind", "dtype", "device", "devices", "load",
                 "engine", "limits", "fallbacks", "memory", "ray"}
        if unknown := sorted(set(data) - known):
            raise RegistryError(f"model {data.get('name')!r}: unknown settings {unknown}")
        name = check_name(data.get("name"), "a model's name")
        version = str(data.get("version", "1"))
        if version:
            check_name(version, f"the version of {name}")
        if isinstance(data.get("fallbacks"), str):
            raise RegistryError(f"model {name}@{version}: fallbacks must be a list of model "
                                "names, e.g. [\"other@1\"]")
        source = data.get("source")
        if not isinstance(source, str) or not source:
            raise RegistryError(f"model {name}@{version}: a source is required")
        device, engine = str(data.get("device", "auto")), dict(data.get("engine") or {})
        if "devices" in data:
            if "device" in data or "tensor_parallel_size" in engine:
                raise RegistryError(f"model {name}@{version}: devices replaces device and "
                                    "engine.tensor_parallel_size; give one of them")
            device, engine["tensor_parallel_size"] = parse_devices(
                data["devices"], f"model {name}@{version}")
        spec = cls(name=name, version=version, source=source, kind=data.get("kind", "generate"),
                   dtype=str(data.get("dtype", "auto")), device=device,
                   load=data.get("load", "startup"), engine=engine,
                   limits=dict(data.get("limits") or {}),
                   fallbacks=tuple(data.get("fallbacks") or ()),
                   memory_bytes=parse_bytes(data.get("memory")),
                   ray=dict(data.get("ray") or {}))
        spec.validate()
        return spec

    def validate(self) -> None:
        where = f"model {self.id}"
        if self.kind not in KINDS:
            raise RegistryError(f"{where}: kind must be one of {KINDS}")
        if self.load not in LOAD_POLICIES:
            raise RegistryError(f"{where}: load must be one of {LOAD_POLICIES}")
        if bad := sorted(set(self.limits) - set(LIMIT_OPTIONS)):
            raise RegistryError(f"{where}: unknown settings {bad}; known: {list(LIMIT_OPTIONS)}")
        if bad := sorted(set(self.engine) - set(ENGINE_OPTIONS)):
            raise RegistryError(f"{where}: unknown settings {bad} in engine; known: "
                                f"{list(ENGINE_OPTIONS)}")
        try:
            for name, value in self.engine.items():
                check_value(BY_NAME[name], value)
        except EngineArgError as exc:
            raise RegistryError(f"{where}: {exc}") from None
        if bad := sorted(set(self.ray) - set(RAY_OPTIONS)):
            raise RegistryError(f"{where}: unknown settings {bad} in ray; known: "
                                f"{list(RAY_OPTIONS)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e6
                   for v in self.ray.values()):
            raise RegistryError(f"{where}: ray settings are numbers >= 0")
        if not all(isinstance(f, str) and f for f in self.fallbacks):
            raise RegistryError(f"{where}: fallbacks must be a list of model names")


@dataclass(frozen=True)
class RegistrySettings:
    roots: tuple[Path, ...] = ()
    memory_budget: int | None = None  # bytes of weights + KV over all loaded models
    idle_ttl_s: float = 0.0  # unload a model idle this long (0: never)
    drain_timeout_s: float = 60.0  # a replaced version's in-flight requests get this long


def resolve_source(source: str, roots: tuple[Path, ...]) -> Path | str:
    """A source id -> the file or directory under one of the roots (or the builtin id)."""
    if source.startswith(BUILTIN_PREFIX):
        if source != BUILTIN_PREFIX + "smollm2":
            raise RegistryError(f"unknown builtin model {source!r}; known: builtin:smollm2")
        return source
    rel = Path(source)
    if rel.is_absolute() or source.startswith(("/", "\\", "~")) or ".." in rel.parts \
            or "\\" in source or "\x00" in source or not rel.parts:
        raise RegistryError(f"source {source[:128]!r} must be a relative id under a model "
                            "root (no absolute paths, no '..')")
    for root in roots:
        root = root.resolve()
        candidate = (root / rel).resolve()
        if candidate != root and root in candidate.parents and candidate.exists():
            return candidate
    raise RegistryError(f"source {source[:128]!r} was not found under the model roots")


class Registry:
    """Specs and aliases; mutated only by the model pool (admin calls) on the event loop."""

    def __init__(self, settings: RegistrySettings | None = None) -> None:
        self.settings = settings or RegistrySettings()
        self.specs: dict[str, ModelSpec] = {}  # id -> spec, in registration order
        self.aliases: dict[str, dict[str, float]] = {}  # alias -> {model id: weight}

    # --- building ----------------------------------------------------------------------------

    def add(self, spec: ModelSpec, *, replace: bool = False) -> None:
        spec.validate()
        if spec.id in self.specs and not replace:
            raise RegistryError(f"model {spec.id} is already registered")
        if spec.id in self.aliases:
            raise RegistryError(f"{spec.id} is already an alias")
        self.specs.pop(spec.id, None)
        self.specs[spec.id] = spec

    def remove(self, model_id: str) -> ModelSpec:
        if any(model_id in targets for targets in self.aliases.values()):
            raise RegistryError(f"{model_id} is a target of an alias; change the alias first")
        try:
            return self.specs.pop(model_id)
        except KeyError:
            raise RegistryError(f"unknown model {model_id}") from None

    def set_alias(self, alias: str, targets: dict[str, float]) -> None:
        check_name(alias, "an alias")
        if alias in self.specs:
            raise RegistryError(f"{alias} is a model id; an alias needs another name")
        if not targets:
            raise RegistryError(f"alias {alias}: at least one target is required")
        clean: dict[str, float] = {}
        for target, weight in targets.items():
            if target not in self.specs:
                raise RegistryError(f"alias {alias}: unknown model {target!r} (aliases point "
                                    "at name@version ids)")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0 \
                    or not math.isfinite(weight):
                raise RegistryError(f"alias {alias}: weights must be finite numbers >= 0")
            clean[target] = float(weight)
        if sum(clean.values()) <= 0:
            raise RegistryError(f"alias {alias}: the weights add up to zero")
        self.aliases[alias] = clean

    def remove_alias(self, alias: str) -> None:
        if self.aliases.pop(alias, None) is None:
            raise RegistryError(f"unknown alias {alias}")

    # --- routing -----------------------------------------------------------------------------

    def candidates(self, name: str) -> dict[str, float] | None:
        """The model ids `name` may route to, with weights; None when it names nothing."""
        if name in self.aliases:
            return self.aliases[name]
        if name in self.specs:
            return {name: 1.0}
        versions = [spec.id for spec in self.specs.values() if spec.name == name]
        return {versions[-1]: 1.0} if versions else None

    def route(self, name: str, user: str | None = None) -> str | None:
        """The model id that answers a request naming `name` (sticky per user)."""
        targets = self.candidates(name)
        if not targets:
            return None
        if len(targets) == 1:
            return next(iter(targets))
        live = [(t, w) for t, w in targets.items() if w > 0]
        point = sticky_point(name, user) if user else random.random()
        total = sum(w for _, w in live)
        acc = 0.0
        for target, weight in live:
            acc += weight / total
            if point < acc:
                return target
        return live[-1][0]

    def is_referenced(self, model_id: str) -> bool:
        return any(model_id in t for t in self.aliases.values())


def sticky_point(alias: str, user: str) -> float:
    """A number in [0, 1) fixed by (alias, user): the same user lands on the same version."""
    digest = hashlib.sha256(f"{alias}\x00{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_registry_file(path: str | Path) -> Registry:
    """Parse a registry file; every mistake is a RegistryError naming the setting."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = _parse(path, text)
    except ValueError as exc:
        raise RegistryError(f"{path}: {exc}") from None
    return registry_from_dict(data, base=path.parent)


def _parse(path: Path, text: str) -> dict[str, Any]:
    if path.suffix.lower() == ".json":
        return json.loads(text)
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def registry_from_dict(data: dict[str, Any], base: Path = Path(".")) -> Registry:
    if unknown := sorted(set(data) - {"server", "models", "aliases"}):
        raise RegistryError(f"unknown sections {unknown}; known: server, models, aliases")
    server = data.get("server") or {}
    if unknown := sorted(set(server) - {"roots", "memory_budget", "idle_ttl_s",
                                        "drain_timeout_s"}):
        raise RegistryError(f"[server]: unknown settings {unknown}")
    roots = tuple((base / Path(r).expanduser()).resolve() for r in server.get("roots", []))
    registry = Registry(RegistrySettings(
        roots=roots, memory_budget=parse_bytes(server.get("memory_budget")),
        idle_ttl_s=float(server.get("idle_ttl_s", 0.0)),
        drain_timeout_s=float(server.get("drain_timeout_s", 60.0))))
    for entry in data.get("models") or []:
        spec = ModelSpec.from_dict(entry)
        resolve_source(spec.source, roots)  # a typo fails at start-up, not at first use
        registry.add(spec)
    if not registry.specs:
        raise RegistryError("the registry lists no models")
    for alias, targets in (data.get("aliases") or {}).items():
        registry.set_alias(alias, {targets: 100.0} if isinstance(targets, str) else targets)
    for spec in registry.specs.values():
        for fallback in spec.fallbacks:
            if registry.candidates(fallback) is None:
                raise RegistryError(f"model {spec.id}: unknown fallback {fallback!r}")
    return registry
