"""Passwords, tokens, CSRF and login rate limiting.

- Passwords: argon2id (argon2-cffi defaults). Hashing is deliberately slow, so it happens only at
  login, never per request.
- Tokens (browser sessions and API tokens): 32 random bytes; the database keeps only their
  SHA-256, and a request is authenticated by one indexed lookup of that hash, memoised in-process
  for ``TOKEN_CACHE_SECONDS`` (revoking a token in this process drops it from the cache at once;
  other processes notice within that many seconds).
- CSRF: a per-session secret, sent back by forms (hidden field) and by scripts (``X-CSRF-Token``),
  compared in constant time. Requests authenticated by a bearer token are not exposed to CSRF.
- Login rate limit: failures counted per username and per client address in a sliding window.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("rankloop-dummy-password")

TOKEN_CACHE_SECONDS = 30.0
SESSION_DAYS = 14


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant-ish time: an unknown user still costs one argon2 verification."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))


@dataclass(frozen=True)
class Principal:
    """Who is asking: resolved from a session cookie or a bearer token."""

    user_id: int
    username: str
    role: str
    via: str  # "session" | "api"
    csrf: str | None = None
    token_hash: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class TokenCache:
    def __init__(self, ttl: float = TOKEN_CACHE_SECONDS, max_size: int = 10000):
        self.ttl, self.max_size = ttl, max_size
        self._d: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, h: str) -> Principal | None:
        hit = self._d.get(h)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, h: str, p: Principal, expires_at: float | None = None) -> None:
        until = time.monotonic() + self.ttl
        if expires_at is not None:
            until = min(until, time.monotonic() + max(0.0, expires_at - time.time()))
        with self._lock:
            if len(self._d) >= self.max_size:
                self._d.clear()
            self._d[h] = (until, p)

    def drop(self, h: str | None = None, user_id: int | None = None) -> None:
        with self._lock:
            if h is not None:
                self._d.pop(h, None)
            if user_id is not None:
                for k in [k for k, (_, p) in self._d.items() if p.user_id == user_id]:
                    del self._d[k]


class LoginLimiter:
    """At most ``max_failures`` failed logins per username (and ``max_failures_per_address`` per
    client address) in ``window`` seconds."""

    def __init__(self, max_failures: int = 10, window: float = 300.0, max_failures_per_address: int = 50):
        self.max_failures, self.window = max_failures, window
        self.per_address = max_failures_per_address  # higher: many people may share one NAT address
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        while q and q[0] < now - self.window:
            q.popleft()
        return q

    def retry_after(self, username: str, address: str) -> int:
        """Seconds to wait before another attempt is allowed (0: allowed now)."""
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            for key, limit in ((f"u:{username.lower()}", self.max_failures), (f"a:{address}", self.per_address)):
                q = self._recent(key, now)
                if len(q) >= limit:
                    wait = max(wait, q[0] + self.window - now)
            return int(wait) + 1 if wait > 0 else 0

    def failed(self, username: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"u:{username.lower()}", f"a:{address}"):
                self._recent(key, now).append(now)

    def succeeded(self, username: str) -> None:
        with self._lock:
            self._fails.pop(f"u:{username.lower()}", None)
