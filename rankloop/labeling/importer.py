"""Import prompts and candidates (``rankloop sample`` output) into a project as items and slots.

Ranking mode: a prompt's candidates in this import form one item, and there must be exactly K of
them. Pairwise mode: every pair of a prompt's new candidates is an item. A prompt id seen before
in the project (a later round of the loop) is reused if its content is the same.

Demonstration mode: a prompt is one item, with its model drafts (any number, none included) as
the candidates a labeler may start from; a conversation must end with the user's turn (the
labeler writes the reply), and gold rankings have no meaning there (review takes their place).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from rankloop.io import jsonl_lines
from rankloop.labeling.db import refresh_claim_statistics, writing
from rankloop.labeling.models import CandidateRow, Item, Project, PromptRow, Slot
from rankloop.labeling.schemas import MAX_EXTERNAL_ID, MAX_TEXT, GoldIn, ImportOut
from rankloop.labeling.services.errors import Invalid, explain, listing
from rankloop.records import Candidate, Prompt, normalise_order


def _fail(msg: str, bad: list[str]) -> None:
    if bad:
        raise Invalid(f"{msg}: {listing(bad)}")


def _chars(p: Prompt) -> int:
    return len(p.text) if p.text is not None else sum(len(m.get("content", "")) + len(m.get("role", "")) for m in p.messages)


def check_sizes(prompts: list[Prompt], candidates: list[Candidate]) -> None:
    """Every id fits its column and no text is over ``MAX_TEXT`` characters (the whole request is
    bounded by the body limit; this bounds each piece, so one row cannot take it all)."""
    _fail(f"ids longer than {MAX_EXTERNAL_ID} characters",
          [f"{x.id[:40]!r}… ({len(x.id)})" for x in [*prompts, *candidates] if len(x.id) > MAX_EXTERNAL_ID]
          + [f"candidate {c.id!r} names prompt {c.prompt_id[:40]!r}… ({len(c.prompt_id)})" for c in candidates
             if len(c.prompt_id) > MAX_EXTERNAL_ID])
    _fail(f"policy names longer than {MAX_EXTERNAL_ID} characters",
          [f"candidate {c.id!r}" for c in candidates if len(c.policy) > MAX_EXTERNAL_ID])
    _fail(f"prompts longer than {MAX_TEXT} characters", [f"{p.id!r} has {_chars(p)}" for p in prompts if _chars(p) > MAX_TEXT])
    _fail(f"candidates longer than {MAX_TEXT} characters",
          [f"{c.id!r} has {len(c.text)}" for c in candidates if len(c.text) > MAX_TEXT])


def import_items(db: Session, project: Project, prompts: list[Prompt], candidates: list[Candidate],
                 gold: list[GoldIn] = ()) -> ImportOut:
    check_sizes(prompts, candidates)
    by_prompt: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_prompt[c.prompt_id].append(c)
    pids = [p.id for p in prompts]
    _fail("prompt ids repeated in this import", sorted(i for i, n in Counter(pids).items() if n > 1))
    cids = [c.id for c in candidates]
    if len(set(cids)) != len(cids):
        seen: set[str] = set()
        _fail("candidate ids repeated in this import", sorted({i for i in cids if i in seen or seen.add(i)}))
    gold_by = {}
    for g in gold:
        try:
            gold_by[g.prompt_id] = normalise_order(g.order)
        except ValueError as e:
            raise Invalid(f"gold ranking for prompt {g.prompt_id!r}: {e}") from None
    _fail("gold rankings name prompts that are not in this import", sorted(set(gold_by) - set(pids)))

    with writing(db):
        existing = {r.external_id: r for r in db.execute(
            select(PromptRow.id, PromptRow.external_id, PromptRow.content).where(
                PromptRow.project_id == project.id, PromptRow.external_id.in_(pids))).all()} if pids else {}
        known_prompts = set(pids)
        orphan = sorted({c.prompt_id for c in candidates} - known_prompts)
        _fail("candidates refer to prompts that are not in this import", [f"{c!r}" for c in orphan])
        _fail("prompts already in the project with different content",
              [p.id for p in prompts if p.id in existing and existing[p.id].content != p.content])
        dup = set(db.execute(select(CandidateRow.external_id).where(
            CandidateRow.project_id == project.id, CandidateRow.external_id.in_(cids))).scalars()) if cids else set()
        _fail("candidate ids already imported into this project", sorted(dup))
        if project.mode == "demonstration":
            check_demonstration_prompts(prompts, gold_by)
        elif project.mode == "ranking":
            _fail(f"each prompt needs exactly K = {project.k} candidates in ranking mode",
                  [f"{p.id!r} has {len(by_prompt[p.id])}" for p in prompts if len(by_prompt[p.id]) != project.k])
        else:
            _fail("each prompt needs at least 2 candidates in pairwise mode",
                  [f"{p.id!r} has {len(by_prompt[p.id])}" for p in prompts if len(by_prompt[p.id]) < 2])
        for pid, order in gold_by.items():
            flat = [c for g in order for c in g]
            want = {c.id for c in by_prompt[pid]}
            if sorted(flat) != sorted(want):
                raise Invalid(f"gold ranking for prompt {pid!r} must be a permutation of its candidates {sorted(want)}")

        new = [p for p in prompts if p.id not in existing]
        row_id = {p.id: existing[p.id].id for p in prompts if p.id in existing}
        if new:
            for rid, ext in db.execute(insert(PromptRow).returning(PromptRow.id, PromptRow.external_id, sort_by_parameter_order=True),
                                       [dict(project_id=project.id, external_id=p.id, content=p.content, meta=p.meta) for p in new]):
                row_id[ext] = rid
        if candidates:
            db.execute(insert(CandidateRow), [dict(project_id=project.id, prompt_row_id=row_id[c.prompt_id], external_id=c.id,
                                                   text=c.text, policy=c.policy, round=c.round, meta=c.meta) for c in candidates])
        item_rows: list[dict[str, Any]] = []
        for p in prompts:
            ids = [c.id for c in by_prompt[p.id]]
            groups = [ids] if project.mode in ("ranking", "demonstration") else [list(pair) for pair in combinations(ids, 2)]
            for g in groups:
                gold_order = None
                if p.id in gold_by:
                    keep = set(g)
                    gold_order = [[c for c in grp if c in keep] for grp in gold_by[p.id]]
                    gold_order = [grp for grp in gold_order if grp]
                item_rows.append(dict(project_id=project.id, prompt_row_id=row_id[p.id], candidate_ids=g,
                                      is_gold=gold_order is not None, gold_order=gold_order))
        slots = 0
        gold_items = sum(r["is_gold"] for r in item_rows)
        if item_rows:
            item_ids = db.execute(insert(Item).returning(Item.id, Item.is_gold, sort_by_parameter_order=True), item_rows).all()
            slot_rows = [dict(project_id=project.id, item_id=iid, slot_no=n, status="open", is_gold=False)
                         for iid, is_gold in item_ids if not is_gold for n in range(project.overlap)]
            if slot_rows:
                db.execute(insert(Slot), slot_rows)
                refresh_claim_statistics(db)
            slots = len(slot_rows)
    return ImportOut(prompts=len(new), candidates=len(candidates), items=len(item_rows), gold_items=gold_items, slots=slots)


def check_demonstration_prompts(prompts: list[Prompt], gold_by: dict) -> None:
    """What a demonstration project refuses at import, so no labeler is given a task that cannot be
    answered (and every submission makes a valid ``records.Demonstration``)."""
    _fail("gold rankings do not apply to a demonstration project (submitted demonstrations are reviewed "
          "instead); leave 'gold' out", sorted(gold_by))
    _fail("prompts with empty text", [p.id for p in prompts if p.text is not None and not p.text.strip()])
    _fail("conversations must end with the user's turn (the labeler writes the reply); these end with another's",
          [f"{p.id!r} ends with {p.messages[-1]['role']!r}" for p in prompts if p.messages and p.messages[-1]["role"] != "user"])


def parse_jsonl_bytes(data: bytes, name: str) -> list[dict]:
    """The JSON objects of an uploaded JSONL file; ``Invalid`` naming the line for anything else."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise Invalid(f"{name}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                      "save the file as UTF-8") from None
    out = []
    for lineno, raw in jsonl_lines(text):  # not splitlines(): see rankloop.io.jsonl_lines
        if raw.strip():
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise Invalid(f"{name}:{lineno}: not valid JSON: {e.msg}") from None
            except RecursionError:
                raise Invalid(f"{name}:{lineno}: JSON nested too deeply") from None
            if not isinstance(obj, dict):
                raise Invalid(f"{name}:{lineno}: expected a JSON object")
            out.append(obj)
    return out


def _combined_prompt_id(r: dict, row: int) -> str:
    """A combined row's prompt id: ``prompt_id`` (or ``id``) as given, 0 included; the row number
    only when neither is there."""
    pid = r.get("prompt_id", r.get("id"))
    if pid is None or pid == "":
        return str(row)
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise Invalid(f"'prompt_id' must be a string or a whole number, not {type(pid).__name__}")
    return str(pid)


def _combined_candidates(r: dict, optional: bool = False) -> list:
    cands = r.get("candidates", r.get("drafts") if optional else None)
    if cands is None and optional:
        return []
    if not isinstance(cands, list):
        got = "missing" if cands is None else f"a {type(cands).__name__}"
        raise Invalid(f"'candidates' must be a list of texts or {{\"id\", \"text\"}} objects ({got})")
    return cands


def split_rows(candidate_rows: list[dict], prompt_rows: list[dict] | None, name: str = "upload", prompts_name: str = "prompts",
               drafts_optional: bool = False) -> tuple[list[Prompt], list[Candidate], list[GoldIn]]:
    """Validate uploaded rows into records.

    With a prompts file: candidates rows are ``Candidate`` records. Without one, each row is
    combined: ``{"prompt_id", "prompt" (text or messages), "candidates": [{"id", "text", …}],
    "gold": [[…], …]?}``. ``drafts_optional`` (demonstration projects): a combined row's candidates
    (or ``drafts``) may be left out, so a plain prompts file imports as it is."""
    from pydantic import ValidationError

    prompts: list[Prompt] = []
    cands: list[Candidate] = []
    gold: list[GoldIn] = []
    where, i = name, 0
    try:
        if prompt_rows is not None:
            where = prompts_name
            for i, r in enumerate(prompt_rows, start=1):
                r = dict(r)
                if "prompt" in r and "text" not in r and "messages" not in r:
                    p = r.pop("prompt")
                    r["messages" if isinstance(p, list) else "text"] = p
                prompts.append(Prompt.model_validate(r))
            where = name
            for i, r in enumerate(candidate_rows, start=1):
                cands.append(Candidate.model_validate(r))
        else:
            for i, r in enumerate(candidate_rows, start=1):
                pid = _combined_prompt_id(r, i)
                p = r.get("prompt", r.get("text", r.get("messages")))
                prompts.append(Prompt(id=pid, **({"messages": p} if isinstance(p, list) else {"text": p}), meta=r.get("meta", {})))
                for j, c in enumerate(_combined_candidates(r, drafts_optional)):
                    c = dict(c) if isinstance(c, dict) else {"text": c}
                    c.setdefault("id", f"{pid}-{j}")
                    c["prompt_id"] = pid
                    cands.append(Candidate.model_validate(c))
                if r.get("gold") is not None:
                    gold.append(GoldIn(prompt_id=pid, order=r["gold"]))
    except ValidationError as e:
        raise Invalid(f"{where} row {i}: {explain(e)}") from None
    except Invalid as e:
        raise Invalid(f"{where} row {i}: {e}") from None
    return prompts, cands, gold


def read_files(candidates: str | Path, prompts: str | Path | None = None, drafts_optional: bool = False
               ) -> tuple[list[Prompt], list[Candidate], list[GoldIn]]:
    cp = Path(candidates)
    rows = parse_jsonl_bytes(cp.read_bytes(), cp.name)
    prow = parse_jsonl_bytes(Path(prompts).read_bytes(), Path(prompts).name) if prompts else None
    return split_rows(rows, prow, cp.name, Path(prompts).name if prompts else "prompts", drafts_optional)
