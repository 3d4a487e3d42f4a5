"""API keys: created, listed and revoked with `lathe keys`, checked on every request.

A key reads `lathe-<id>-<secret>`. The id is public (it names the key in `lathe keys list`, usage
records and metrics); only the SHA-256 of the secret is stored, so a copy of the database does not
leak usable keys, and the secret is shown once, at creation. The secret has 256 random bits, so a
plain hash (no salt, no slow KDF) is enough; it is compared with `hmac.compare_digest` (constant
time). Keys are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass

from accounts.store import Store
from recipes import LatheError
from recipes.schema import PlatformConfig

PREFIX = "lathe"
ANONYMOUS = "anonymous"  # who calls when auth is off
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    tier: str
    created_at: float
    revoked_at: float | None = None


def auth_enabled(config: PlatformConfig, host: str) -> bool:
    """`auto`: a key is required unless the server listens on loopback only."""
    if config.auth != "auto":
        return config.auth == "on"
    return not is_loopback(host)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def needs_key(config: PlatformConfig, path: str) -> bool:
    """With auth on, every path needs a key except the probes the config leaves open."""
    if path in ("/health", "/ready"):
        return config.protect_health
    if path == "/metrics":
        return config.protect_metrics
    return True


def create_key(store: Store, name: str, tier: str, config: PlatformConfig) -> tuple[ApiKey, str]:
    """A new key and its full text (shown once; only the secret's hash is kept)."""
    if tier not in config.tiers:
        raise LatheError(f"tier '{tier}' is not configured; known tiers: {', '.join(config.tiers)} "
                         "(add one under platform.tiers in the recipe)")
    if not name.strip():
        raise LatheError("a key needs a --name (who or what it is for)")
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    key = ApiKey(id=key_id, name=name, tier=tier, created_at=time.time())
    store.execute("INSERT INTO api_keys (id, name, tier, secret_sha256, created_at) VALUES (?, ?, ?, ?, ?)",
                  (key.id, key.name, key.tier, _sha256(secret), key.created_at))
    return key, f"{PREFIX}-{key_id}-{secret}"


def list_keys(store: Store) -> list[ApiKey]:
    rows = store.rows("SELECT id, name, tier, created_at, revoked_at FROM api_keys ORDER BY created_at")
    return [ApiKey(**dict(row)) for row in rows]


def revoke_key(store: Store, key_id: str) -> ApiKey:
    changed = store.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                            (time.time(), key_id))
    row = store.row("SELECT id, name, tier, created_at, revoked_at FROM api_keys WHERE id = ?", (key_id,))
    if row is None:
        raise LatheError(f"no API key with id '{key_id}' (see `lathe keys list`)")
    if not changed:
        raise LatheError(f"API key '{key_id}' was already revoked")
    return ApiKey(**dict(row))


def authenticate(store: Store, token: str | None) -> ApiKey | None:
    """The live key `token` is, or None (missing, malformed, unknown, wrong secret or revoked)."""
    if not token:
        return None
    prefix, _, rest = token.partition("-")
    key_id, _, secret = rest.partition("-")
    row = None
    if prefix == PREFIX and key_id and secret:
        row = store.row("SELECT id, name, tier, created_at, revoked_at, secret_sha256 FROM api_keys WHERE id = ?",
                        (key_id,))
    # Hash and compare even for an unknown id, so timing does not tell which ids exist.
    matches = hmac.compare_digest(_sha256(secret), row["secret_sha256"] if row else _DUMMY_HASH)
    if row is None or not matches or row["revoked_at"] is not None:
        return None
    return ApiKey(id=row["id"], name=row["name"], tier=row["tier"], created_at=row["created_at"])


def key_tier(store: Store, key_id: str) -> str | None:
    """The tier of key `key_id`; None for a caller without a key (anonymous, `lathe batch run`)."""
    row = store.row("SELECT tier FROM api_keys WHERE id = ?", (key_id,))
    return row["tier"] if row else None


def active_key_count(store: Store) -> int:
    return store.row("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL")[0]


def bearer_token(authorization: str | None) -> str | None:
    """`Authorization: Bearer <key>` -> key (the scheme is case-insensitive, as RFC 7235 says)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
