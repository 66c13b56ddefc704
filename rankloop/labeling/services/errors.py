"""Domain errors: what went wrong, independent of how the caller talks to us (HTTP, terminal)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class DomainError(Exception):
    """Base of every error the labeling services raise; ``str(e)`` is the message to show.

    (Not ``LabelingError``: that name is the HTTP client's error, ``client.LabelingError``.)"""


class NotFound(DomainError):
    """The named thing does not exist, or is not visible to the one asking."""


class Conflict(DomainError):
    """The request contradicts what is stored (a duplicate name, an answered task)."""


class Invalid(DomainError):
    """The input itself is wrong (a short password, a ranking that is not a permutation)."""


class Forbidden(DomainError):
    """Allowed for nobody in this state (e.g. demoting the last admin) or not for this user."""


class Unauthorized(DomainError):
    """Wrong credentials."""


class Throttled(DomainError):
    """Too many attempts; ``retry_after`` seconds to wait."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


MAX_SHOWN = 5  # problems listed in one message; the rest are counted
MAX_VALUE_CHARS = 60  # a quoted value is cut to this many characters


def cut(text: str, width: int = MAX_VALUE_CHARS) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def brief(value: Any, width: int = MAX_VALUE_CHARS) -> str:
    """``repr(value)``, cut to ``width`` characters: error messages never echo a whole payload."""
    return cut(repr(value), width)


def listing(items: list[str], n: int = MAX_SHOWN) -> str:
    """The first ``n`` items (each cut to ``MAX_VALUE_CHARS``), then how many more."""
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(cut(s) for s in items[:n]) + more


def explain(err: ValidationError, n: int = MAX_SHOWN) -> str:
    """A pydantic error as one line, ``field: message; …``, without the input values."""
    parts = []
    for e in err.errors(include_input=False, include_url=False):
        loc = ".".join(str(x) for x in e["loc"] if x not in ("function-after", "function-before", "body"))
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = f" (and {len(parts) - n} more)" if len(parts) > n else ""
    return "; ".join(parts[:n]) + more


def parse(model: type[M], **values: Any) -> M:
    """``model(**values)``, with a validation failure as ``Invalid`` (for callers that are not
    FastAPI, which validates request bodies itself: the CLI and the HTML forms)."""
    try:
        return model(**values)
    except ValidationError as e:
        raise Invalid(explain(e)) from None
