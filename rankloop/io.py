"""Readers and writers for every file format at a stage boundary.

Formats
-------
- ``rankings``: rankloop's own ``rankings.jsonl`` (see ``records.RankedExample``).
- ``trl``: TRL's preference format: ``prompt``/``chosen``/``rejected`` (plain strings, or
  conversational message lists), optional ``margin``; also the implicit-prompt form where
  ``chosen``/``rejected`` hold whole conversations.
- ``hh``: Anthropic HH-RLHF transcripts: ``chosen``/``rejected`` dialogues whose shared prefix up
  to the last ``\\n\\nAssistant:`` is the prompt.
- ``prompts`` / ``candidates``: the inputs and outputs of ``rankloop sample``.

Every row is validated. A bad row raises ``DataError`` naming the file, the line and what is wrong,
unless the caller asked to skip bad rows, in which case they are counted in ``ReadStats``.
``.jsonl.gz`` files are read transparently; a truncated gzip is reported as such.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, TypeVar, get_args

from pydantic import ValidationError

from rankloop.records import Candidate, Comparison, Prompt, RankedExample, Rating, apply_flags

T = TypeVar("T")

# The preference formats every reader of rankings takes (train-rm, eval-rm, train-dpo): a new one is
# a parser in PARSERS, a rule in ``detect_format`` and its name here.
PreferenceFormat = Literal["auto", "rankings", "trl", "hh"]
FORMATS = get_args(PreferenceFormat)[1:]


class DataError(ValueError):
    """A malformed input row: ``path:line: message``."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line, self.message = str(path), line, message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass
class ReadStats:
    rows: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    def skip(self, err: DataError) -> None:
        self.skipped += 1
        if len(self.reasons) < 20:
            self.reasons.append(str(err))


def _explain(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if x not in ("function-after", "function-before"))
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def jsonl_lines(data: bytes | str | Iterable[bytes]) -> Iterator[tuple[int, Any]]:
    """The one line splitter of every JSONL reader: ``(line_number, line)``, 1-based, each line
    ending at ``"\n"`` only, as JSON Lines defines it.

    Not ``str.splitlines()``: it also breaks at ``\r``, ``\v``, ``\f``, ``\x1c``-``\x1e``, U+0085,
    U+2028 and U+2029, which JSON allows raw inside strings (``json.dumps(ensure_ascii=False)``
    writes the last three raw), so it cut rows with such text in two. A binary file object is
    iterated as it is: that splits at ``b"\n"`` only too, without reading the file whole.
    """
    if isinstance(data, bytes):
        return enumerate(data.split(b"\n"), start=1)
    if isinstance(data, str):
        return enumerate(data.split("\n"), start=1)
    return enumerate(data, start=1)


def iter_jsonl(path: str | Path, on_error: Callable[[DataError], None] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_json)`` for each non-blank line (1-based line numbers).

    A line that is not UTF-8 or not JSON raises ``DataError``, or, with ``on_error``, is handed to it
    and skipped. A truncated or corrupt gzip stream always raises: nothing after it can be read.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, "file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in jsonl_lines(f):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    err = DataError(path, lineno, f"not valid UTF-8 ({e.reason} at byte {e.start})")
                    if on_error is None:
                        raise err from None
                    on_error(err)
                    continue
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    err = DataError(path, lineno, f"not valid JSON: {e.msg} (column {e.colno})")
                    if on_error is None:
                        raise err from None
                    on_error(err)
                    continue
                yield lineno, obj
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(path, lineno + 1, f"gzip stream is truncated or corrupt ({e})") from None


def _read(
    path: str | Path,
    parse: Callable[[Any, str], T | None],
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
) -> list[T]:
    stats = stats if stats is not None else ReadStats()
    out: list[T] = []

    def unreadable(err: DataError) -> None:
        stats.rows += 1
        if not skip_invalid:
            raise err
        stats.skip(err)

    for lineno, obj in iter_jsonl(path, unreadable):
        stats.rows += 1
        source = f"{path}:{lineno}"
        try:
            if not isinstance(obj, dict):
                raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
            rec = parse(obj, source)
        except ValidationError as e:
            err = DataError(path, lineno, _explain(e))
        except ValueError as e:
            err = DataError(path, lineno, str(e))
        else:
            if rec is not None:
                out.append(rec)
            continue
        if not skip_invalid:
            raise err
        stats.skip(err)
    return out


# ---------------------------------------------------------------- prompts and candidates


def read_prompts(path: str | Path, skip_invalid: bool = False, stats: ReadStats | None = None) -> list[Prompt]:
    """Prompts JSONL: ``{"id", "text"|"messages", "meta"}``; ``prompt`` is accepted for ``text``
    and a missing ``id`` becomes the line number."""

    def parse(obj: dict, source: str) -> Prompt:
        obj = dict(obj)
        if "prompt" in obj and "text" not in obj and "messages" not in obj:
            p = obj.pop("prompt")
            obj["messages" if isinstance(p, list) else "text"] = p
        obj.setdefault("id", source.rsplit(":", 1)[1])
        return Prompt.model_validate(obj)

    prompts = _read(path, parse, skip_invalid, stats)
    _check_unique_ids(path, [p.id for p in prompts], "prompt")
    return prompts


def read_candidates(path: str | Path, skip_invalid: bool = False, stats: ReadStats | None = None) -> list[Candidate]:
    return _read(path, lambda obj, _: Candidate.model_validate(obj), skip_invalid, stats)


def _check_unique_ids(path: str | Path, ids: list[str], what: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise DataError(path, None, f"{what} id {i!r} appears more than once")
        seen.add(i)


# ---------------------------------------------------------------- preference data

ASSISTANT = "\n\nAssistant:"


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split an HH-RLHF pair into (prompt, chosen_response, rejected_response).

    The prompt is the shared prefix up to and including the last ``\\n\\nAssistant:``.
    """
    cut = chosen.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError("'chosen' has no '\\n\\nAssistant:' turn")
    prompt = chosen[: cut + len(ASSISTANT)]
    if not rejected.startswith(prompt):
        cut_r = rejected.rfind(ASSISTANT)
        if cut_r < 0 or rejected[: cut_r + len(ASSISTANT)] != prompt:
            raise ValueError("'chosen' and 'rejected' do not share the dialogue up to the last Assistant turn")
    return prompt, chosen[len(prompt) :], rejected[len(prompt) :]


def _parse_hh(obj: dict, source: str) -> RankedExample:
    for key in ("chosen", "rejected"):
        if not isinstance(obj.get(key), str):
            raise ValueError(f"'{key}' must be a string")
    if obj["chosen"] == obj["rejected"]:
        raise ValueError("'chosen' equals 'rejected'")
    prompt, chosen, rejected = split_hh(obj["chosen"], obj["rejected"])
    comp = Comparison(prompt=prompt, chosen=chosen, rejected=rejected)
    return RankedExample.from_comparison(comp, prompt_id=source, source=source)


def _parse_trl(obj: dict, source: str) -> RankedExample:
    if "chosen" not in obj or "rejected" not in obj:
        raise ValueError("a TRL preference row needs 'chosen' and 'rejected'")
    chosen, rejected = obj["chosen"], obj["rejected"]
    prompt = obj.get("prompt")
    if isinstance(chosen, list) or isinstance(rejected, list):
        # Conversational: responses are message lists. Without an explicit prompt the shared
        # leading messages are the prompt (TRL's "implicit prompt").
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise ValueError("'chosen' and 'rejected' must both be strings or both message lists")
        if prompt is None:
            n = 0
            while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
                n += 1
            prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
            if not prompt:
                raise ValueError("conversational row without 'prompt' shares no leading messages")
        elif isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
        chosen, rejected = _assistant_text(chosen, "chosen"), _assistant_text(rejected, "rejected")
    elif prompt is None:
        raise ValueError("a plain-text TRL row needs 'prompt'")
    margin = obj.get("margin")
    if margin is not None and not isinstance(margin, (int, float)):
        raise ValueError(f"margin must be a number, got {margin!r}")
    comp = Comparison(prompt=prompt, chosen=chosen, rejected=rejected, margin=margin)
    return RankedExample.from_comparison(comp, prompt_id=str(obj.get("prompt_id", source)), source=source)


def _assistant_text(messages: list, key: str) -> str:
    if not messages or not all(isinstance(m, dict) for m in messages):
        raise ValueError(f"'{key}' must be a non-empty list of messages")
    if any(m.get("role") != "assistant" for m in messages):
        raise ValueError(f"'{key}' must hold only assistant messages after the prompt")
    return "\n".join(str(m.get("content", "")) for m in messages)


def _parse_rankings(obj: dict, source: str) -> RankedExample:
    return RankedExample.model_validate({**obj, "source": source})


PARSERS: dict[str, Callable[[dict, str], RankedExample]] = {
    "rankings": _parse_rankings,
    "trl": _parse_trl,
    "hh": _parse_hh,
}


def detect_format(path: str | Path) -> str:
    """Guess ``rankings``, ``trl`` or ``hh`` from the first row's keys."""
    for lineno, obj in iter_jsonl(path):
        if not isinstance(obj, dict):
            raise DataError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        keys = set(obj)
        if {"candidates", "ranking"} <= keys:
            return "rankings"
        if {"chosen", "rejected"} <= keys:
            if "prompt" in keys or not isinstance(obj["chosen"], str):
                return "trl"
            return "hh"
        raise DataError(
            path, lineno,
            f"cannot tell the format from the keys {sorted(keys)}: expected rankings "
            "(prompt_id, prompt, candidates, ranking), TRL (prompt, chosen, rejected) or HH-RLHF (chosen, rejected)",
        )
    raise DataError(path, None, "file is empty")


def read_preferences(
    path: str | Path,
    fmt: str | None = None,
    skip_invalid: bool = False,
    stats: ReadStats | None = None,
) -> list[RankedExample]:
    """Read any supported preference file as K-way ``RankedExample`` rows (pairs are K = 2)."""
    fmt = fmt or detect_format(path)
    if fmt not in PARSERS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return _read(path, PARSERS[fmt], skip_invalid, stats)


# ---------------------------------------------------------------- writers


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file and ``os.replace`` so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Line breaks to str.splitlines() that json.dumps(ensure_ascii=False) leaves raw: escaped (the same
# JSON value), so a row stays one line for any reader, even one that splits with splitlines().
_LINE_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\u0085\u2028\u2029"})


def jsonl_line(row: dict | Any) -> str:
    """One JSONL row (a dict or a pydantic record), without its ``"\n"``: UTF-8 text kept as it
    is, except the line breaks above, escaped. Write JSONL with this wherever it is written
    (``write_jsonl``; downloads too), so every row is one line for every reader."""
    if hasattr(row, "model_dump"):
        row = row.model_dump(mode="json", exclude_none=True)
    return json.dumps(row, ensure_ascii=False).translate(_LINE_BREAKS)


def write_jsonl(path: str | Path, rows: Iterable[dict | Any]) -> int:
    """Write rows (dicts or pydantic records) as JSONL, atomically. Returns the row count."""
    lines = [jsonl_line(r) for r in rows]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


def write_rankings(path: str | Path, examples: Iterable[RankedExample]) -> int:
    return write_jsonl(path, (e.to_row() for e in examples))


def write_trl(path: str | Path, examples: Iterable[RankedExample], all_bad: str = "drop",
              unsafe: str = "never_chosen") -> int:
    """TRL's explicit-prompt preference format, one row per (chosen, rejected) pair, ties dropped.

    The labeler's flags are applied first (``records.apply_flags``): by default an all-bad ranking
    gives no pair and an unsafe candidate is never ``chosen`` (a TRL pair is read as "move towards
    chosen"). ``all_bad="keep"``, ``unsafe="keep"`` write every pair as ranked."""
    rows = []
    for e in apply_flags(list(examples), all_bad=all_bad, unsafe=unsafe):
        for c in e.comparisons():
            row: dict[str, Any] = {"prompt": c.prompt, "chosen": c.chosen, "rejected": c.rejected}
            if isinstance(c.prompt, list):  # conversational: responses become assistant turns
                row["chosen"] = [{"role": "assistant", "content": c.chosen}]
                row["rejected"] = [{"role": "assistant", "content": c.rejected}]
            if c.margin is not None:
                row["margin"] = c.margin
            rows.append(row)
    return write_jsonl(path, rows)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


# ---------------------------------------------------------------- ratings (issue 15 item 1)


def read_ratings(path: str | Path, skip_invalid: bool = False, stats: ReadStats | None = None,
                 need_texts: bool = False) -> list[Rating]:
    """``ratings.jsonl``: one ``records.Rating`` per row (per candidate judged). ``need_texts``: every
    row must carry ``prompt`` and ``text`` (what a trainer reads), else the row is an error."""

    def parse(obj: dict, source: str) -> Rating:
        r = Rating.model_validate({**obj, "source": source})
        if need_texts:
            missing = [k for k in ("prompt", "text") if getattr(r, k) is None]
            if missing:
                raise ValueError(f"a rating a trainer reads needs {' and '.join(repr(k) for k in missing)} "
                                 "(the export writes both)")
        return r

    return _read(path, parse, skip_invalid, stats)


def write_ratings(path: str | Path, ratings: Iterable[Rating]) -> int:
    return write_jsonl(path, (r.to_row() for r in ratings))
