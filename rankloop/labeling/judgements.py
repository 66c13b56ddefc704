"""Import judgements made elsewhere (earlier rounds, a vendor, a published set) into a project.

Formats (``fmt``; ``auto`` tells them apart by the first row's keys):

- ``rankings``: rankloop's ``rankings.jsonl`` (``records.RankedExample`` rows: ``labeler``,
  ``created_at``, ``strength``, ``margin``, candidates' ``policy`` are kept);
- ``trl``: ``prompt``/``chosen``/``rejected`` (optional ``margin``), read by ``io``'s TRL parser;
- ``hh``: HH-RLHF ``chosen``/``rejected`` transcripts; the shared dialogue up to the last
  ``\\n\\nAssistant:`` is the prompt (``io.split_hh``);
- ``pairwise``: one judgement per row, ``PairwiseRow``: ``prompt``, ``response_a``,
  ``response_b``, ``winner`` (``a`` | ``b`` | ``tie``), ``rater``, and optional ``strength``,
  ``timestamp``, ``model_a``, ``model_b``, ``prompt_id``.

``trl``/``hh``/``rankings`` rows may also name their rater (``labeler`` or ``rater``) and time
(``created_at`` or ``timestamp``); a row that does not is by ``default_rater``.

What becomes of a row:

- its prompt is matched by ``prompt_id`` (or, without one, by its content: the id is then
  ``p-`` + a hash of it), its candidates by text within the prompt; new ones are added;
- an *item* is one prompt's set of candidates (order does not matter: ``a`` vs ``b`` and ``b`` vs
  ``a`` are the same item), so several raters' judgements of one pair meet on one item, where
  agreement, α and consensus read them exactly as they read collected rankings;
- each rater is an account with ``external = True``: inactive, without a usable password, made
  on first sight (``rater_prefix`` is put before every name, to keep two vendors' ``r1`` apart);
  a rater whose name is a real account of this app is refused, not merged into it;
- the judgement is a ``RankingRow`` on a slot of its own with ``status = 'imported'``: such a slot
  is never open nor leased and has neither ``slot_no`` nor ``labeler_id``, so imports never fill or
  consume the places the queue serves (and the same rater may judge an item twice: a repeat);
- its time, strength and (TRL) margin are kept; ``import_meta`` says ``source`` (file:line) and
  ``batch`` (a hash of the file): the same file imported twice is refused, not counted twice.

All or nothing: a bad row is an error naming the file and line, and nothing is written; with
``skip_invalid`` bad rows are skipped and counted instead. The whole import is one transaction.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rankloop.io import PARSERS, jsonl_lines
from rankloop.labeling.db import refresh_claim_statistics, writing
from rankloop.labeling.models import (
    CandidateRow,
    Item,
    Project,
    PromptRow,
    RankingRow,
    Slot,
    User,
)
from rankloop.labeling.schemas import MAX_EXTERNAL_ID, MAX_TEXT, JudgementsImportOut
from rankloop.labeling.services.errors import Conflict, Invalid, explain, listing
from rankloop.records import Message, PromptContent, RankedExample, _check_messages

JudgementFormat = Literal["auto", "rankings", "trl", "hh", "pairwise"]
FORMATS = get_args(JudgementFormat)[1:]
MAX_RATER = 64  # users.username
MAX_ERRORS_SHOWN = 20
UNUSABLE_PASSWORD = "!external: imported rater, cannot log in"  # not an argon2 hash: never verifies


class PairwiseRow(BaseModel):
    """One rater's judgement of two responses to a prompt (the ``pairwise`` format)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | list[Message]
    prompt_id: str | None = Field(None, max_length=MAX_EXTERNAL_ID)
    response_a: str = Field(min_length=1, max_length=MAX_TEXT)
    response_b: str = Field(min_length=1, max_length=MAX_TEXT)
    winner: Literal["a", "b", "tie"]
    rater: str = Field(min_length=1, max_length=MAX_RATER)
    strength: int | None = None
    timestamp: datetime | None = None
    model_a: str | None = Field(None, max_length=MAX_EXTERNAL_ID)
    model_b: str | None = Field(None, max_length=MAX_EXTERNAL_ID)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[Message]) -> str | list[Message]:
        if isinstance(v, list):
            return _check_messages(v)
        if not v.strip():
            raise ValueError("the prompt is empty")
        return v

    @field_validator("response_b")
    @classmethod
    def _different(cls, v: str, info: Any) -> str:
        if v == info.data.get("response_a"):
            raise ValueError("response_a and response_b are the same text")
        return v


@dataclass
class Judgement:
    """A row, read: candidates as (given id or None, text, policy or None); ``order`` in given ids
    (or ``a``/``b`` and ``chosen``/``rejected``), best → worst, ties grouped."""

    line: int
    prompt_id: str | None
    prompt: PromptContent
    candidates: list[tuple[str, str, str | None]]
    order: list[list[str]]
    rater: str | None
    created_at: datetime | None = None
    strength: int | None = None
    margin: float | None = None
    all_bad: bool = False
    unsafe: bool = False
    rationale: str | None = None
    keep_ids: bool = False  # the file's candidate ids are real ids (rankings format), worth keeping
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- reading rows


def detect(obj: dict) -> str:
    keys = set(obj)
    if {"response_a", "response_b", "winner"} <= keys:
        return "pairwise"
    if {"candidates", "ranking"} <= keys:
        return "rankings"
    if {"chosen", "rejected"} <= keys:
        return "trl" if "prompt" in keys or not isinstance(obj["chosen"], str) else "hh"
    raise ValueError(f"cannot tell the format from the keys {sorted(keys)[:12]}: expected pairwise (prompt, response_a, "
                     "response_b, winner, rater), rankings (prompt_id, prompt, candidates, ranking), TRL (prompt, chosen, "
                     "rejected) or HH-RLHF (chosen, rejected)")


def _time(v: Any, key: str) -> datetime | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise TypeError(f"'{key}' must be an ISO 8601 time, got {type(v).__name__}")
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{key}' is not an ISO 8601 time: {v[:40]!r}") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)  # a time without zone is taken as UTC


def _strength(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"'strength' must be a whole number, got {v!r}"[:120])
    return v


def _rater(obj: dict) -> str | None:
    r = obj.get("rater", obj.get("labeler"))
    if r is not None and not isinstance(r, (str, int)) or isinstance(r, bool):
        raise TypeError(f"'rater' must be a string, got {type(r).__name__}")
    return None if r is None else str(r)


def parse_row(obj: Any, fmt: str, line: int, source: str) -> Judgement:
    """One JSONL object as a ``Judgement``; ``ValueError`` (or pydantic's) saying what is wrong."""
    if not isinstance(obj, dict):
        raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
    if fmt == "pairwise":
        r = PairwiseRow.model_validate(obj)
        order = [["a", "b"]] if r.winner == "tie" else [["a"], ["b"]] if r.winner == "a" else [["b"], ["a"]]
        when = r.timestamp if r.timestamp is None or r.timestamp.tzinfo else r.timestamp.replace(tzinfo=timezone.utc)
        return Judgement(line, r.prompt_id, r.prompt, [("a", r.response_a, r.model_a), ("b", r.response_b, r.model_b)], order,
                         r.rater, when, r.strength)
    extra = {k: obj[k] for k in ("rater", "timestamp", "strength") if k in obj}
    rest = {k: v for k, v in obj.items() if k not in extra}
    rater = _rater(obj)
    strength = _strength(obj.get("strength"))
    if fmt == "rankings":
        rest.pop("labeler", None)
        ex = RankedExample.model_validate({**rest, "source": source})
        when = ex.ranking.created_at or _time(obj.get("timestamp"), "timestamp")
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return Judgement(line, ex.prompt_id, ex.prompt, [(c.id, c.text, c.policy) for c in ex.candidates], ex.ranking.order,
                         rater if rater is not None else ex.ranking.labeler, when, strength if strength is not None else ex.ranking.strength, ex.margin,
                         ex.ranking.all_bad, ex.ranking.unsafe, ex.ranking.rationale, keep_ids=True)
    ex = PARSERS[fmt](rest, source)
    pid = obj.get("prompt_id")
    if pid is not None and not isinstance(pid, (str, int)) or isinstance(pid, bool):
        raise TypeError(f"'prompt_id' must be a string, got {type(pid).__name__}")
    return Judgement(line, None if pid is None else str(pid), ex.prompt, [(c.id, c.text, None) for c in ex.candidates],
                     ex.ranking.order, rater, _time(obj.get("created_at", obj.get("timestamp")), "timestamp"), strength,
                     ex.margin)


def read_rows(data: bytes, name: str, fmt: JudgementFormat = "auto") -> tuple[list[Judgement], list[str], int]:
    """(judgements, errors ``name:line: message``, rows read) of an uploaded JSONL file."""
    if fmt not in ("auto", *FORMATS):
        raise Invalid(f"unknown format {fmt!r}; choose one of auto, {', '.join(FORMATS)}")
    out: list[Judgement] = []
    errors: list[str] = []
    rows = 0
    chosen = None if fmt == "auto" else fmt
    for line, raw in jsonl_lines(data):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            rows += 1
            errors.append(f"{name}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
            continue
        if not text.strip():
            continue
        rows += 1
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:
            errors.append(f"{name}:{line}: not valid JSON: {getattr(e, 'msg', 'nested too deep')}")
            continue
        try:
            if chosen is None and isinstance(obj, dict):
                chosen = detect(obj)
            out.append(parse_row(obj, chosen or "pairwise", line, f"{name}:{line}"))
        except ValidationError as e:
            errors.append(f"{name}:{line}: {explain(e)}")
        except (ValueError, TypeError) as e:
            errors.append(f"{name}:{line}: {str(e)[:300]}")
    if rows == 0:
        raise Invalid(f"{name}: no rows (the file is empty)")
    return out, errors, rows


# ---------------------------------------------------------------- identities


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def content_prompt_id(prompt: PromptContent) -> str:
    """The id of a prompt that came without one: a hash of its content (the same prompt in two
    rows, or two files, is one prompt)."""
    return "p-" + _digest(json.dumps(prompt, ensure_ascii=False, sort_keys=True))[:16]


def content_candidate_id(prompt_id: str, text: str) -> str:
    return "c-" + _digest(prompt_id, text)[:16]


def _chars(prompt: PromptContent) -> int:
    return len(prompt) if isinstance(prompt, str) else sum(len(m.get("content", "")) + len(m.get("role", "")) for m in prompt)


def _printable(name: str) -> bool:
    return all(ord(c) >= 32 and ord(c) != 127 for c in name)


# ---------------------------------------------------------------- importing


def import_judgements(db: Session, project: Project, data: bytes, name: str, fmt: JudgementFormat = "auto",
                      default_rater: str = "imported", rater_prefix: str = "", skip_invalid: bool = False,
                      open_slots: bool = False) -> JudgementsImportOut:
    """Import the judgements in ``data`` (JSONL bytes from the file ``name``) into ``project``.

    ``open_slots``: also give each *new* item the project's ``overlap`` open places, so labelers
    here rank it too (default: imported items are served to nobody)."""
    judgements, errors, rows = read_rows(data, name, fmt)
    batch = hashlib.sha256(data).hexdigest()[:16]
    k_needed = 2 if project.mode == "pairwise" else project.k
    now = datetime.now(timezone.utc)

    def bad(j: Judgement, msg: str) -> None:
        errors.append(f"{name}:{j.line}: {msg}")

    with writing(db):
        if db.execute(select(RankingRow.id).where(RankingRow.project_id == project.id,
                                                  RankingRow.idempotency_key.like(f"import:{batch}:%")).limit(1)).first():
            raise Conflict(f"{name} was already imported into project {project.name!r} (batch {batch}): "
                           "importing it again would count every judgement twice")
        # -- what the project has already, for the prompts and raters these rows name
        pid_of = [j.prompt_id if j.prompt_id is not None else content_prompt_id(j.prompt) for j in judgements]
        wanted = sorted(set(pid_of))
        prompts: dict[str, tuple[int | None, Any]] = {}
        for chunk in _chunks(wanted):
            for rid, ext, content in db.execute(select(PromptRow.id, PromptRow.external_id, PromptRow.content)
                                                .where(PromptRow.project_id == project.id, PromptRow.external_id.in_(chunk))):
                prompts[ext] = (rid, content)
        known_rows = [rid for rid, _ in prompts.values()]
        by_text: dict[tuple[str, str], str] = {}  # (prompt ext id, text) → candidate ext id
        taken: set[str] = set()  # candidate ext ids in use in the project (or by this import)
        ext_of_row = {rid: ext for ext, (rid, _) in prompts.items()}
        for chunk in _chunks(known_rows):
            for prow, ext, text in db.execute(select(CandidateRow.prompt_row_id, CandidateRow.external_id, CandidateRow.text)
                                              .where(CandidateRow.prompt_row_id.in_(chunk))):
                by_text[(ext_of_row[prow], text)] = ext
        items: dict[tuple[str, frozenset[str]], tuple[int | None, bool]] = {}  # → (item id, is_gold)
        for chunk in _chunks(known_rows):
            for iid, prow, cids, gold in db.execute(select(Item.id, Item.prompt_row_id, Item.candidate_ids, Item.is_gold)
                                                    .where(Item.prompt_row_id.in_(chunk))):
                items.setdefault((ext_of_row[prow], frozenset(cids)), (iid, bool(gold)))
        raters = sorted({rater_prefix + (j.rater if j.rater is not None else default_rater) for j in judgements})
        accounts: dict[str, tuple[int, bool]] = {}
        for chunk in _chunks(raters):
            for uid, uname, ext in db.execute(select(User.id, User.username, User.external).where(User.username.in_(chunk))):
                accounts[uname] = (uid, bool(ext))

        # -- every row checked against them before anything is written
        new_prompts: dict[str, Any] = {}
        new_cands: dict[str, tuple[str, str, str | None]] = {}  # ext id → (prompt ext id, text, policy)
        new_items: dict[tuple[str, frozenset[str]], list[str]] = {}
        planned: list[tuple[Judgement, str, str, list[list[str]], tuple[str, frozenset[str]]]] = []
        for j, pid in zip(judgements, pid_of):
            rater = rater_prefix + (j.rater if j.rater is not None else default_rater)
            if not rater.strip() or len(rater) > MAX_RATER or not _printable(rater):
                bad(j, f"rater {rater[:40]!r} must be 1 to {MAX_RATER} printable characters")
                continue
            if rater in accounts and not accounts[rater][1]:
                bad(j, f"rater {rater!r} is an account of this app, not an imported rater: give a rater prefix "
                       "(--rater-prefix) to keep imported raters apart")
                continue
            if len(pid) > MAX_EXTERNAL_ID:
                bad(j, f"prompt_id is longer than {MAX_EXTERNAL_ID} characters")
                continue
            content = prompts[pid][1] if pid in prompts else new_prompts.get(pid, j.prompt)
            if content != j.prompt:
                bad(j, f"prompt {pid[:60]!r} is already in the project (or earlier in this file) with other content")
                continue
            if len(j.candidates) != k_needed:
                bad(j, f"{len(j.candidates)} candidates, but project {project.name!r} shows {k_needed} per item "
                       f"({project.mode} mode)")
                continue
            if any(len(t) > MAX_TEXT for _, t, _ in j.candidates) or _chars(j.prompt) > MAX_TEXT:
                bad(j, f"a text is longer than {MAX_TEXT} characters")
                continue
            if len({t for _, t, _ in j.candidates}) != len(j.candidates):
                bad(j, "two candidates have the same text: a preference between them means nothing")
                continue
            if j.strength is not None and not -(2**31) < j.strength < 2**31:
                bad(j, "strength is out of range")
                continue
            ids: dict[str, str] = {}
            for given, text, policy in j.candidates:
                ext = by_text.get((pid, text))
                if ext is None:
                    ext = given if j.keep_ids and given not in taken and given not in new_cands and len(given) <= MAX_EXTERNAL_ID \
                        else content_candidate_id(pid, text)
                    new_cands[ext] = (pid, text, policy if policy and len(policy) <= MAX_EXTERNAL_ID else None)
                    by_text[(pid, text)] = ext
                taken.add(ext)
                ids[given] = ext
            if pid not in prompts:
                new_prompts.setdefault(pid, j.prompt)
            key = (pid, frozenset(ids.values()))
            if key not in items:
                new_items.setdefault(key, [ids[g] for g, _, _ in j.candidates])
            planned.append((j, rater, pid, [[ids[c] for c in g] for g in j.order], key))
        # candidate ids may already exist in the project under another prompt: those get content ids
        clash = set()
        for chunk in _chunks(sorted(new_cands)):
            clash |= set(db.execute(select(CandidateRow.external_id).where(CandidateRow.project_id == project.id,
                                                                           CandidateRow.external_id.in_(chunk))).scalars())
        if clash:
            rename = {c: content_candidate_id(new_cands[c][0], new_cands[c][1]) for c in clash}
            new_cands = {rename.get(c, c): v for c, v in new_cands.items()}
            new_items = {(p, frozenset(rename.get(c, c) for c in s)): [rename.get(c, c) for c in v]
                         for (p, s), v in new_items.items()}
            planned = [(j, r, p, [[rename.get(c, c) for c in g] for g in o], (k[0], frozenset(rename.get(c, c) for c in k[1])))
                       for j, r, p, o, k in planned]
        if errors and not skip_invalid:
            raise Invalid(f"{len(errors)} bad row(s), nothing imported (or skip them with --skip-invalid): "
                          + listing(errors, MAX_ERRORS_SHOWN))

        # -- writing: raters, prompts, candidates, items, then one imported slot and ranking per row
        new_raters = sorted({r for _, r, _, _, _ in planned} - set(accounts))
        if new_raters:
            try:
                for uid, uname in db.execute(insert(User).returning(User.id, User.username, sort_by_parameter_order=True),
                                             [{"username": u, "password_hash": UNUSABLE_PASSWORD, "role": "labeler", "active": False,
                                                   "external": True, "created_at": now} for u in new_raters]):
                    accounts[uname] = (uid, True)
            except IntegrityError:
                raise Conflict("another import or an admin created one of these raters meanwhile: try again") from None
        for ext, content in new_prompts.items():
            prompts[ext] = (None, content)
        if new_prompts:
            for rid, ext in db.execute(insert(PromptRow).returning(PromptRow.id, PromptRow.external_id, sort_by_parameter_order=True),
                                       [{"project_id": project.id, "external_id": p, "content": c, "meta": {"imported_from": name}}
                                        for p, c in new_prompts.items()]):
                prompts[ext] = (rid, prompts[ext][1])
        if new_cands:
            db.execute(insert(CandidateRow), [{"project_id": project.id, "prompt_row_id": prompts[p][0], "external_id": c, "text": t,
                                                   "policy": pol or "unknown", "round": 0, "meta": {}}
                                              for c, (p, t, pol) in new_cands.items()])
        if new_items:
            keys = list(new_items)
            made = db.execute(insert(Item).returning(Item.id, sort_by_parameter_order=True),
                              [{"project_id": project.id, "prompt_row_id": prompts[p][0], "candidate_ids": new_items[(p, s)],
                                    "is_gold": False, "gold_order": None} for p, s in keys]).scalars().all()
            for key, iid in zip(keys, made):
                items[key] = (iid, False)
            if open_slots:
                db.execute(insert(Slot), [{"project_id": project.id, "item_id": iid, "slot_no": n, "status": "open", "is_gold": False}
                                          for iid in made for n in range(project.overlap)])
                refresh_claim_statistics(db)
        seen: set[tuple[str, int]] = set()
        repeats = 0
        for j, rater, _pid, _order, key in planned:
            who = (rater, items[key][0])
            repeats += who in seen
            seen.add(who)
        if planned:
            slot_ids = db.execute(insert(Slot).returning(Slot.id, sort_by_parameter_order=True),
                                  [{"project_id": project.id, "item_id": items[key][0], "slot_no": None, "labeler_id": None,
                                        "status": "imported", "is_gold": items[key][1]} for _, _, _, _, key in planned]).scalars().all()
            db.execute(insert(RankingRow), [
                {"slot_id": sid, "project_id": project.id, "item_id": items[key][0], "labeler_id": accounts[rater][0], "order": order,
                     "all_bad": j.all_bad, "unsafe": j.unsafe, "rationale": j.rationale, "idempotency_key": f"import:{batch}:{j.line}",
                     "is_gold": items[key][1], "created_at": j.created_at or now, "strength": j.strength,
                     "import_meta": {"source": f"{name}:{j.line}", "batch": batch, "imported_at": now.isoformat(),
                                  **({"margin": j.margin} if j.margin is not None else {}),
                                  **({"time_given": False} if j.created_at is None else {})}}
                for sid, (j, rater, _p, order, key) in zip(slot_ids, planned)])
    return JudgementsImportOut(batch=batch, rows=rows, judgements=len(planned), skipped=len(errors),
                               errors=errors[:MAX_ERRORS_SHOWN], prompts=len(new_prompts), candidates=len(new_cands),
                               items=len(new_items), items_judged=len({key for *_, key in planned}),
                               raters=len({r for _, r, _, _, _ in planned}), raters_new=len(new_raters), repeats=repeats,
                               open_slots=len(new_items) * project.overlap if open_slots else 0)


def _chunks(xs: list, n: int = 500) -> list[list]:
    """``IN`` lists in pieces (SQLite allows at most 32766 bound parameters per statement)."""
    return [xs[i:i + n] for i in range(0, len(xs), n)]
