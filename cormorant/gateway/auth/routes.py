"""The route table (every path and the scope it needs) and the one path normalisation.

Authorization and routing are both checked against that normalisation.
Deny by default: a path no rule matches is refused before it reaches the app, and a test
enumerates every route of the real app and fails if one is missing here. A new endpoint
therefore needs one line in `DEFAULT_RULES`.

Authorization looks at `canonical_path(raw_path)`: percent-decoded until stable (so %2F and
%252F are slashes), backslashes as slashes, `//` collapsed, `.`/`..` resolved, trailing slash
dropped; rules match it case-folded. The middleware then requires that this canonical path
is exactly what Starlette will route (`route_path(scope)`), so a path that is authorized as
one thing cannot be routed as another. Imports the stdlib and gateway.auth.keys only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from cormorant.gateway.auth.keys import SCOPE_ADMIN, SCOPE_INFERENCE, SCOPE_METRICS

PUBLIC = "public"
MAX_DECODE_ROUNDS = 4
_PARAM = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)(?::([a-z]+))?\}")


@dataclass(frozen=True)
class RouteRule:
    path: str  # a Starlette path template, lower case: "/v1/models/{model_id:path}"
    scope: str  # PUBLIC or one of keys.ALL_SCOPES


DEFAULT_RULES: tuple[RouteRule, ...] = (
    RouteRule("/health", PUBLIC),
    RouteRule("/ready", PUBLIC),
    RouteRule("/metrics", SCOPE_METRICS),  # PUBLIC with --metrics-public
    RouteRule("/openapi.json", SCOPE_INFERENCE),
    RouteRule("/v1/completions", SCOPE_INFERENCE),
    RouteRule("/v1/chat/completions", SCOPE_INFERENCE),
    RouteRule("/v1/responses", SCOPE_INFERENCE),
    RouteRule("/v1/embeddings", SCOPE_INFERENCE),
    RouteRule("/v1/classify", SCOPE_INFERENCE),
    RouteRule("/v1/models", SCOPE_INFERENCE),
    RouteRule("/v1/models/{model_id:path}", SCOPE_INFERENCE),
    RouteRule("/tokenize", SCOPE_INFERENCE),
    RouteRule("/detokenize", SCOPE_INFERENCE),
    # OpenAI's Files and Batch APIs: a caller sees only its own files and batches.
    RouteRule("/v1/files", SCOPE_INFERENCE),
    RouteRule("/v1/files/{file_id}", SCOPE_INFERENCE),
    RouteRule("/v1/files/{file_id}/content", SCOPE_INFERENCE),
    RouteRule("/v1/batches", SCOPE_INFERENCE),
    RouteRule("/v1/batches/{batch_id}", SCOPE_INFERENCE),
    RouteRule("/v1/batches/{batch_id}/cancel", SCOPE_INFERENCE),
    RouteRule("/v1/usage", SCOPE_ADMIN),  # per-key usage of every key: operators only
    # Operator endpoints (usage, keys, drain, ...) live under /admin and need the admin scope.
    RouteRule("/admin/drift", SCOPE_ADMIN),  # the drift report (server.route_drift)
    RouteRule("/admin/{rest:path}", SCOPE_ADMIN),
    # The browser pages (server.route_web): static shells with no data in them, so public;
    # every call they make is one of the API routes above, with the key the user typed in.
    RouteRule("/", PUBLIC),
    RouteRule("/playground", PUBLIC),
    RouteRule("/console", PUBLIC),
    RouteRule("/web/{name}", PUBLIC),
)


def _template_regex(template: str) -> re.Pattern[str]:
    """Starlette's template syntax as a regex: {x} is one segment, {x:path} the rest."""
    out, pos = "^", 0
    for m in _PARAM.finditer(template):
        out += re.escape(template[pos:m.start()])
        out += ".*" if m.group(2) == "path" else "[^/]+"
        pos = m.end()
    return re.compile(out + re.escape(template[pos:]) + "$")


class RouteTable:
    def __init__(self, rules: tuple[RouteRule, ...] = DEFAULT_RULES,
                 metrics_public: bool = False) -> None:
        if metrics_public:
            rules = tuple(RouteRule(r.path, PUBLIC) if r.path == "/metrics" else r
                          for r in rules)
        self.rules = rules
        self._compiled = [(_template_regex(r.path.casefold()), r) for r in rules]

    def match(self, canonical: str) -> RouteRule | None:
        """The rule for a canonical path, compared case-folded (so /V1/Models is treated as
        /v1/models: a case variant can only ever need more, never less, authorization)."""
        folded = canonical.casefold()
        for pattern, rule in self._compiled:
            if pattern.match(folded):
                return rule
        return None

    def declares(self, template: str) -> bool:
        """Whether an app route's template has a rule (for the route-table test)."""
        folded = template.casefold()
        return any(r.path.casefold() == folded for r in self.rules) or \
            self.match(template) is not None


def canonical_path(raw_path: bytes, root_path: str = "") -> str | None:
    """The normalised path after the root prefix, or None for one we refuse to interpret."""
    try:
        text = raw_path.decode("ascii")
    except UnicodeDecodeError:
        return None
    # Strip the root prefix exactly when Starlette does (see route_path below).
    if root_path and text.startswith(root_path) and text[len(root_path):][:1] in ("", "/"):
        text = text[len(root_path):]
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = unquote(text, errors="replace")
        if decoded == text:
            break
        text = decoded
    else:
        return None  # still encoded after several rounds: nobody legitimate does that
    if not text.startswith("/") or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        return None
    segments: list[str] = []
    for segment in text.replace("\\", "/").split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def route_path(scope: dict) -> str:
    """The path Starlette's router matches (starlette._utils.get_route_path, restated here
    because that helper is private): scope["path"] less a leading root_path."""
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root):] if path[len(root)] == "/" else path
