"""Authentication and authorization: the Authenticator and the AuthMiddleware (pure ASGI).

`Authenticator` maps a token to a Principal; `AuthMiddleware` decides every HTTP request before
routing and puts the caller on `scope["state"]["principal"]` (`request.state.principal`).

Decision order, so that a caller without a valid key learns nothing about the app:
  1. canonical path + route rule (gateway.auth.routes); a path whose canonical form differs from
     what Starlette will route, or that no rule declares, is never public;
  2. a public rule on a canonical path passes (with the caller's principal if it sent a
     valid key, else `Principal.unauthenticated()`);
  3. no valid key -> 401, whatever the path (unknown and trick paths included);
  4. valid key, unknown or non-canonical path -> 404; valid key without the rule's scope -> 403.
With auth disabled (no --api-key, key database or key file) every caller is
`Principal.anonymous()`, and unknown or non-canonical paths still get 404.

Tokens never reach a log line, an error body or a metric: logs name the key id, and only of a
key that exists (an unknown token's would-be id may be part of someone's secret).
Imports the stdlib and gateway.auth.{keys,keystore,routes}.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from urllib.parse import quote

from cormorant.gateway.auth.keys import KeyRecord, Principal, hash_token, lookup_id, verify_token
from cormorant.gateway.auth.keystore import (DEFAULT_REFRESH_S, FileKeyStore, KeyStore,
                                             SqliteKeyStore)
from cormorant.gateway.auth.routes import PUBLIC, RouteTable, canonical_path, route_path

logger = logging.getLogger("cormorant.gateway.auth")

# Compared against when the token names no stored key, so an unknown id costs the same HMAC
# and comparison as a known one.
_DUMMY = KeyRecord(key=None, salt=secrets.token_bytes(16),  # type: ignore[arg-type]
                   digest=hash_token(secrets.token_urlsafe(32), b"dummy"))
_MAX_PATH_IN_ERROR = 128
_current_principal: ContextVar[Principal | None] = ContextVar("cormorant_principal",
                                                              default=None)


class Authenticator:
    """Token -> Principal over any number of key stores plus the optional static key."""

    def __init__(self, stores: Sequence[KeyStore] = (), static_key: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.stores = list(stores)
        self.clock = clock
        self._static_digest = _sha256(static_key) if static_key else None

    def authenticate(self, token: str) -> Principal | None:
        # Every step runs for every token (no early return before the comparisons), so the
        # time taken does not depend on where a wrong token differs from a right one.
        key_id = lookup_id(token)
        record = None
        for store in self.stores:
            found = store.get(key_id)
            if record is None:
                record = found
        is_match = verify_token(record or _DUMMY, token)
        if self._static_digest is not None and hmac.compare_digest(_sha256(token),
                                                                   self._static_digest):
            return Principal.static()
        if record is None or not is_match:
            if record is not None:
                logger.info("authentication failed: wrong secret for key %s", key_id)
            return None
        key = record.key
        if not key.is_active(self.clock()):
            logger.info("authentication failed: key %s is %s", key.key_id,
                        "revoked" if key.revoked else "expired")
            return None
        return Principal.from_key(key)


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def build_authenticator(api_key: str | None = None, keys_db: str | None = None,
                        keys_file: str | None = None, refresh_s: float = DEFAULT_REFRESH_S
                        ) -> Authenticator | None:
    """None when nothing is configured: auth is off and every caller is anonymous."""
    stores: list[KeyStore] = []
    if keys_db:
        stores.append(SqliteKeyStore(keys_db, refresh_s))
    if keys_file:
        stores.append(FileKeyStore(keys_file, refresh_s))
    if not stores and not api_key:
        return None
    return Authenticator(stores, api_key)


def current_principal() -> Principal | None:
    """The caller of the request being served (set by AuthMiddleware for the request's task)."""
    return _current_principal.get()


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    """Work done inside the block is the principal's (current_principal): in-process requests
    such as batch lines, which never pass the middleware."""
    reset = _current_principal.set(principal)
    try:
        yield
    finally:
        _current_principal.reset(reset)


def get_principal(scope_or_request) -> Principal | None:
    """The principal of a Starlette Request or an ASGI scope."""
    state = getattr(scope_or_request, "scope", scope_or_request).get("state", {})
    return state.get("principal")


def bearer_token(scope: dict) -> str | None:
    """None without an Authorization header; "" when it holds no bearer token."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else ""
    return None


class AuthError(Exception):
    def __init__(self, status: int, message: str, type: str, code: str,
                 headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type, code
        self.headers = list(headers)


def _unauthorized(token: str | None) -> AuthError:
    challenge = [(b"www-authenticate", b'Bearer realm="cormorant"')]
    if token is None:
        return AuthError(401, "You didn't provide an API key. Send it in the Authorization "
                         "header as 'Bearer YOUR_KEY'.", "invalid_request_error",
                         "missing_api_key", challenge)
    return AuthError(401, "Incorrect API key provided.", "invalid_request_error",
                     "invalid_api_key", challenge)


def _not_found(scope: dict) -> AuthError:
    path = str(scope.get("path", ""))
    if len(path) > _MAX_PATH_IN_ERROR:
        path = path[:_MAX_PATH_IN_ERROR] + "…"
    return AuthError(404, f"Not found: {path}", "invalid_request_error", "not_found")


def _forbidden(scope_name: str) -> AuthError:
    return AuthError(403, f"This API key does not have the '{scope_name}' scope that this "
                     "endpoint requires.", "permission_error", "insufficient_scope")


class AuthMiddleware:
    def __init__(self, app, authenticator: Authenticator | None,
                 routes: RouteTable | None = None) -> None:
        self.app = app
        self.authenticator = authenticator
        self.routes = routes or RouteTable()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            # No route declares a websocket: refuse before accepting (the server sends 403).
            await send({"type": "websocket.close", "code": 1008})
            return
        try:
            principal = self.decide(scope)
        except AuthError as err:
            await _send_error(err, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        reset = _current_principal.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            _current_principal.reset(reset)

    def decide(self, scope: dict) -> Principal:
        """The caller's principal, or AuthError; see the module docstring for the order."""
        raw = scope.get("raw_path") or quote(scope.get("path", "")).encode("ascii")
        canonical = canonical_path(raw, scope.get("root_path", ""))
        rule = self.routes.match(canonical) if canonical is not None else None
        routable = rule is not None and canonical == route_path(scope)
        if self.authenticator is None:
            if not routable:
                raise _not_found(scope)
            return Principal.anonymous()
        token = bearer_token(scope)
        principal = self.authenticator.authenticate(token) if token else None
        if routable and rule.scope == PUBLIC:
            return principal or Principal.unauthenticated()
        if principal is None:
            raise _unauthorized(token)
        if not routable:
            raise _not_found(scope)
        if not principal.has_scope(rule.scope):
            raise _forbidden(rule.scope)
        return principal


async def _send_error(err: AuthError, send) -> None:
    body = json.dumps({"error": {"message": err.message, "type": err.type, "param": None,
                                 "code": err.code}}, ensure_ascii=False).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *err.headers]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
