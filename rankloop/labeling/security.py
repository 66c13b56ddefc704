"""Passwords, tokens, CSRF and login rate limiting.

- Passwords: argon2id (argon2-cffi defaults). Hashing is deliberately slow, so it happens only at
  login, never per request.
- Tokens (browser sessions and API tokens): 32 random bytes; the database keeps only their
  SHA-256, and a request is authenticated by one indexed lookup of that hash, memoised in-process
  for ``TOKEN_CACHE_SECONDS`` (revoking a token in this process drops it from the cache at once;
  other processes notice within that many seconds).
- CSRF: a per-session secret, sent back by forms (hidden field) and by scripts (``X-CSRF-Token``),
  compared in constant time. Requests authenticated by a bearer token are not exposed to CSRF.
- Login throttling: per (username, address) backoff, and wider per-address and per-username
  counts that spare pairs which logged in before (``LoginLimiter``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
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


@dataclass
class _Pair:
    failures: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class LoginLimiter:
    """Slows password guessing down without letting a stranger lock anyone out (docs/labeling.md,
    "Login throttling").

    - Failures count per (username, address). After ``max_failures`` the pair waits ``base_wait``
      seconds, doubling with each further failure up to ``max_wait``: a guesser slows down only
      themselves, and the account's owner elsewhere is not affected. A success, or ``window``
      seconds without a failure, clears the pair.
    - Guessing spread out is caught by two wider counts over a sliding ``window``: failures from one
      address (many usernames) and failures for one username (many addresses). Over ``per_address``
      or ``per_user`` they make *unknown* pairs wait; a pair that logged in successfully within
      ``known_for`` seconds is exempt, so people behind one NAT address, and an owner at their usual
      address, keep logging in.

    Per process and in memory (lost at a restart); each table holds at most ``max_entries`` keys.
    """

    def __init__(self, max_failures: int = 10, base_wait: float = 30.0, max_wait: float = 900.0, window: float = 900.0,
                 per_address: int = 100, per_user: int = 100, known_for: float = 30 * 86400.0, max_entries: int = 100_000):
        self.max_failures, self.base_wait, self.max_wait, self.window = max_failures, base_wait, max_wait, window
        self.per_address, self.per_user, self.known_for, self.max_entries = per_address, per_user, known_for, max_entries
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._wide: dict[str, deque[float]] = {}  # "a:<address>" and "u:<username>" → failure times
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()  # pair → last success
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._wide.get(key)
        if q is None:
            if len(self._wide) >= self.max_entries:
                self._prune(now)
            q = self._wide[key] = deque()
        while q and q[0] < now - self.window:
            q.popleft()
        return q

    def _prune(self, now: float) -> None:
        """Drop what the window has forgotten; if an attacker's names still fill a table, start it
        afresh (the other counts still hold)."""
        self._pairs = {k: p for k, p in self._pairs.items() if p.last >= now - self.window or p.locked_until > now}
        self._wide = {k: q for k, q in self._wide.items() if q and q[-1] >= now - self.window}
        for table in (self._pairs, self._wide):
            if len(table) >= self.max_entries:
                table.clear()

    def _is_known(self, pair: tuple[str, str], now: float) -> bool:
        t = self._known.get(pair)
        return t is not None and t >= now - self.known_for

    def retry_after(self, username: str, address: str) -> int:
        """Seconds to wait before this pair may try again (0: now)."""
        now, pair = time.monotonic(), (username.lower(), address)
        with self._lock:
            p = self._pairs.get(pair)
            wait = p.locked_until - now if p is not None else 0.0
            if not self._is_known(pair, now):
                for key, limit in ((f"a:{address}", self.per_address), (f"u:{pair[0]}", self.per_user)):
                    q = self._recent(key, now)
                    if len(q) >= limit:
                        wait = max(wait, q[0] + self.window - now)
            return math.ceil(wait) if wait > 0 else 0

    def failed(self, username: str, address: str) -> None:
        now, pair = time.monotonic(), (username.lower(), address)
        with self._lock:
            p = self._pairs.get(pair)
            if p is None:
                if len(self._pairs) >= self.max_entries:
                    self._prune(now)
                p = self._pairs[pair] = _Pair()
            if p.last < now - self.window:
                p.failures = 0
            p.failures, p.last = p.failures + 1, now
            if p.failures >= self.max_failures:
                p.locked_until = now + min(self.max_wait, self.base_wait * 2 ** (p.failures - self.max_failures))
            for key in (f"a:{address}", f"u:{pair[0]}"):
                self._recent(key, now).append(now)

    def succeeded(self, username: str, address: str) -> None:
        pair = (username.lower(), address)
        with self._lock:
            self._pairs.pop(pair, None)
            self._known[pair] = time.monotonic()
            self._known.move_to_end(pair)
            while len(self._known) > self.max_entries:
                self._known.popitem(last=False)
