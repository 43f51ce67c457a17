"""API keys: the record (ApiKey), the caller (Principal), the token format, the secret hashing.

Token format: ``crm-<key_id>-<secret>``: a 12-hex-digit id (lookup is by id) and a secret of
43 letters and digits (256 bits; no '-' or '_', so a double click selects the whole token). The
digest covers the *whole* token, so a wrong prefix or id fails the same single comparison as a
wrong secret. HMAC-SHA256 with a per-key salt, not a slow hash: a 256-bit random secret cannot
be brute-forced, so a slow hash would only slow every request; the salt defeats precomputed
tables. Log and label by `key_id`, never by the token. Pure stdlib.

Prefix-cache namespaces (`prefix_cache_salt`): every key has its own, named after its id
(never its secret), so no key can detect another's cached prompts; keys given the same
`cache_group` share one (a common system prompt). No keys configured: one shared namespace.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
import time
from dataclasses import dataclass, field

# A static --api-key guarding a non-loopback bind: at least this long, and not trivially weak.
MIN_STATIC_KEY_CHARS = 16
MIN_STATIC_KEY_DISTINCT = 6


def static_key_weakness(key: str) -> str | None:
    """Why a static API key is too weak to guard a network-reachable server, or None."""
    if key != key.strip() or any(ch.isspace() or not ch.isprintable() for ch in key):
        return "the API key contains whitespace or control characters"
    if len(key) < MIN_STATIC_KEY_CHARS:
        return (f"the API key has {len(key)} characters; at least {MIN_STATIC_KEY_CHARS} are "
                "required (generate one with `cormorant keys create` or "
                "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    if len(set(key)) < MIN_STATIC_KEY_DISTINCT:
        return (f"the API key uses fewer than {MIN_STATIC_KEY_DISTINCT} distinct characters; "
                "use a random key")
    return None


SCOPE_INFERENCE = "inference"
SCOPE_ADMIN = "admin"
SCOPE_METRICS = "metrics"
ALL_SCOPES = frozenset({SCOPE_INFERENCE, SCOPE_ADMIN, SCOPE_METRICS})

TOKEN_PREFIX = "crm"
KEY_ID_HEX = 12
SECRET_CHARS = 43  # 43 * log2(62) > 256 bits
_ALPHANUMERIC = string.ascii_letters + string.digits
SALT_BYTES = 16
ANONYMOUS_ID = "anonymous"
STATIC_ID = "static"
CACHE_GROUP_MAX_CHARS = 64
_CACHE_GROUP_CHARS = frozenset(_ALPHANUMERIC + "._-")


@dataclass(frozen=True)
class ApiKey:
    """One key's settings. Quotas are None for unlimited; `weight` is its fair-queue share."""

    key_id: str
    name: str
    scopes: frozenset[str]
    allowed_models: frozenset[str] | None = None  # None: every model
    expires_at: float | None = None  # unix seconds; None: never
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute
    max_concurrent: int | None = None
    weight: float = 1.0
    tenant: str = ""  # "" means "the key is its own tenant" (set to key_id below)
    created_at: float = field(default_factory=time.time)
    revoked: bool = False
    cache_group: str = ""  # "" its own prefix-cache namespace; else shared with the group's keys

    def __post_init__(self) -> None:
        if not self.tenant:
            object.__setattr__(self, "tenant", self.key_id)
        check_cache_group(self.cache_group)
        object.__setattr__(self, "scopes", frozenset(self.scopes))
        if self.allowed_models is not None:
            object.__setattr__(self, "allowed_models", frozenset(self.allowed_models))

    def is_expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def is_active(self, now: float | None = None) -> bool:
        return not self.revoked and not self.is_expired(now)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request, on `scope["state"]["principal"]`."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    allowed_models: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    weight: float = 1.0
    name: str = ""
    is_anonymous: bool = False
    cache_namespace: str = ""  # see prefix_cache_salt; "" is the shared (keyless) namespace

    @classmethod
    def from_key(cls, key: ApiKey) -> Principal:
        namespace = f"group:{key.cache_group}" if key.cache_group else f"key:{key.key_id}"
        return cls(key_id=key.key_id, tenant=key.tenant, scopes=key.scopes,
                   allowed_models=key.allowed_models, rpm=key.rpm, tpm=key.tpm,
                   max_concurrent=key.max_concurrent, weight=key.weight, name=key.name,
                   cache_namespace=namespace)

    @classmethod
    def anonymous(cls) -> Principal:
        """The caller when auth is disabled: every scope, no quota of its own."""
        return cls(key_id=ANONYMOUS_ID, tenant=ANONYMOUS_ID, scopes=ALL_SCOPES,
                   name=ANONYMOUS_ID, is_anonymous=True)

    @classmethod
    def unauthenticated(cls) -> Principal:
        """A caller without a valid key on a public route (probes) while auth is enabled."""
        return cls(key_id=ANONYMOUS_ID, tenant=ANONYMOUS_ID, scopes=frozenset(),
                   name=ANONYMOUS_ID, is_anonymous=True)

    @classmethod
    def static(cls) -> Principal:
        """The caller holding the single --api-key: every scope, no quota of its own."""
        return cls(key_id=STATIC_ID, tenant=STATIC_ID, scopes=ALL_SCOPES, name=STATIC_ID,
                   cache_namespace=f"key:{STATIC_ID}")

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def may_use_model(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


def check_cache_group(name: str) -> str:
    """A cache group name: "" (none) or up to 64 letters, digits, '.', '_' and '-'."""
    if len(name) > CACHE_GROUP_MAX_CHARS or not _CACHE_GROUP_CHARS.issuperset(name):
        raise ValueError(f"cache group names have at most {CACHE_GROUP_MAX_CHARS} letters, "
                         f"digits, '.', '_' or '-'; got {name[:80]!r}")
    return name


def prefix_cache_salt(principal: Principal, request_salt: str | None = None) -> str:
    """EngineRequest.cache_salt of a request: the caller's namespace, narrowed by the request's
    own `cache_salt` if it sends one. The request's salt is combined with the namespace, never
    replaces it, so no salt a caller can send lands in another key's namespace; "" (no keys, no
    request salt) is the engine's shared unsalted namespace. A prefix-aware router must hash
    prompts with this value (engine.block_manager.prefix_block_hashes)."""
    if not principal.cache_namespace and not request_salt:
        return ""
    pair = json.dumps([principal.cache_namespace, request_salt or ""])  # injective
    return hashlib.blake2b(pair.encode("ascii"), digest_size=16).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """What the key store holds per key: the settings plus the salted digest of the secret."""

    key: ApiKey
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)


def new_key_id() -> str:
    return secrets.token_hex(KEY_ID_HEX // 2)


def new_secret() -> str:
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(SECRET_CHARS))


def format_token(key_id: str, secret: str) -> str:
    return f"{TOKEN_PREFIX}-{key_id}-{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """(key_id, secret), or None when malformed. For display and the CLI, not the hot path."""
    prefix, _, rest = token.partition("-")
    key_id, _, secret = rest.partition("-")
    if prefix != TOKEN_PREFIX or len(key_id) != KEY_ID_HEX or not secret:
        return None
    return key_id, secret


def lookup_id(token: str) -> str:
    """The key id's position in a token, sliced without validating anything (see above)."""
    start = len(TOKEN_PREFIX) + 1
    return token[start:start + KEY_ID_HEX]


def hash_token(token: str, salt: bytes) -> bytes:
    return hmac.new(salt, token.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def make_record(key: ApiKey, token: str) -> KeyRecord:
    salt = secrets.token_bytes(SALT_BYTES)
    return KeyRecord(key=key, salt=salt, digest=hash_token(token, salt))


def verify_token(record: KeyRecord, token: str) -> bool:
    return hmac.compare_digest(hash_token(token, record.salt), record.digest)


def create_key(name: str, scopes: frozenset[str] | set[str] = frozenset({SCOPE_INFERENCE}),
               **settings) -> tuple[KeyRecord, str]:
    """A fresh key with a new id and secret; returns (record, token). The token is shown once."""
    unknown = set(scopes) - ALL_SCOPES
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(sorted(unknown))}")
    key = ApiKey(key_id=new_key_id(), name=name, scopes=frozenset(scopes), **settings)
    token = format_token(key.key_id, new_secret())
    return make_record(key, token), token


def rotate_key(record: KeyRecord) -> tuple[KeyRecord, str]:
    """Same id and settings, new secret: the old token stops working once the store reloads."""
    token = format_token(record.key.key_id, new_secret())
    return make_record(record.key, token), token
