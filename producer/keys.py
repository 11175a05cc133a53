"""API keys of the web process: created once and shown once, stored only as a SHA-256 hash.

A key is 256 random bits, so a plain SHA-256 is enough to make the stored hash useless to
whoever reads the table (no slow hash needed, unlike passwords). Lookups are by hash and cached
for a few seconds per process: a revoked key stops working within `KEY_CACHE_TTL_S`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from onnxq.errors import KeyExists, KeyRevoked, OnnxqError, Unauthorized
from schema.db import get_engine, session_scope
from schema.tables import ApiKey, utcnow

KEY_PREFIX = "onnxq_"
PREFIX_SHOWN = 12  # characters of a key kept in clear, to tell keys apart in `onnxq keys list`
KEY_CACHE_TTL_S = 5.0
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
KEY_CACHE_MAX = 10_000
_cache: dict[str, tuple[float, ApiKey]] = {}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    """A new key: `secret` is the only time the key itself exists outside the caller's hands."""

    name: str
    secret: str
    prefix: str


def create_key(name: str, *, replace: bool = False) -> CreatedKey:
    """Make a key named `name`; with `replace`, revoke the active key of that name first."""
    if not NAME_PATTERN.match(name):
        raise OnnxqError(
            f"{name!r} is not a key name: use up to 100 letters, digits, '.', '_' or '-'.", code="validation_error"
        )
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        with session_scope() as session:
            if replace:
                _revoke(session, name)
            session.add(ApiKey(name=name, key_hash=hash_key(secret), prefix=secret[:PREFIX_SHOWN]))
    except IntegrityError:
        raise KeyExists(
            f"An active key named {name!r} exists: revoke it first, or pass --replace to rotate it."
        ) from None
    return CreatedKey(name=name, secret=secret, prefix=secret[:PREFIX_SHOWN])


def list_keys() -> list[ApiKey]:
    with Session(get_engine()) as session:
        return list(session.exec(select(ApiKey).order_by(col(ApiKey.name), col(ApiKey.id))))


def revoke_key(name: str) -> bool:
    """Revoke the active key named `name`; False if there is none."""
    with session_scope() as session:
        return _revoke(session, name)


def _revoke(session: Session, name: str) -> bool:
    changed = session.execute(
        update(ApiKey).where(col(ApiKey.name) == name, col(ApiKey.revoked_at).is_(None)).values(revoked_at=utcnow())
    )
    return bool(changed.rowcount)  # type: ignore[attr-defined]


def authenticate(key: str) -> str:
    """The name of the active key `key`; `Unauthorized` for an unknown key, `KeyRevoked` for a
    revoked one."""
    digest = hash_key(key)
    now = time.monotonic()
    hit = _cache.get(digest)
    record: ApiKey | None
    if hit is not None and now - hit[0] < KEY_CACHE_TTL_S:
        record = hit[1]
    else:
        with Session(get_engine(), expire_on_commit=False) as session:
            record = session.exec(select(ApiKey).where(col(ApiKey.key_hash) == digest)).first()
        if record is not None:
            # Only real keys are cached: random guesses must not grow the cache.
            if len(_cache) >= KEY_CACHE_MAX:
                _cache.clear()
            _cache[digest] = (now, record)
    if record is None:
        raise Unauthorized("Unknown API key.")
    if record.revoked_at is not None:
        raise KeyRevoked(f"The API key {record.name!r} was revoked; ask for a new one.")
    return record.name


def is_cached(key: str) -> bool:
    """True if `key` was recently found valid in this process (no database query needed)."""
    hit = _cache.get(hash_key(key))
    return hit is not None and time.monotonic() - hit[0] < KEY_CACHE_TTL_S


def clear_key_cache() -> None:
    """Forget cached lookups (tests switch databases under one process)."""
    _cache.clear()
