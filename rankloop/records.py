"""The records every stage shares (see DESIGN.md, "The records").

    Prompt ─▶ Candidate ×K ─▶ Ranking (as a person gave it) ─▶ Comparison (derived, never stored)

A ``Ranking`` is K-way with tie groups: ``order = [["c3"], ["c1", "c4"], ["c2"]]`` reads
c3 > c1 = c4 > c2. A pairwise choice is the K = 2 case. ``Comparison`` rows are derived from a
ranking on demand (all C(K, 2) ordered pairs, ties dropped) and are also the import/export format
for pairwise corpora (TRL, HH-RLHF).

Identical texts are never a pair: two candidates with the same text carry no preference between
them, whatever groups a labeler put them in, so ``comparisons()`` drops their pair and the reward
losses and metrics skip it too (they receive ``text_classes``). The pairs each copy makes with the
other candidates stay.

``RankedExample`` is one row of ``rankings.jsonl``: a ranking together with the prompt and the
candidate texts it orders, so that a trainer needs no database to read it.

This module imports no torch: the labeling app uses it too.
"""

from __future__ import annotations

import math
from datetime import datetime
from itertools import combinations
from typing import Any, Literal, Sequence, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": str}
PromptContent = Union[str, list[Message]]


def text_classes(texts: Sequence[str]) -> list[int]:
    """Each text's class: the index of the first text equal to it (identical texts share a class)."""
    first: dict[str, int] = {}
    return [first.setdefault(t, i) for i, t in enumerate(texts)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def _check_messages(messages: list[Message]) -> list[Message]:
    if not messages:
        raise ValueError("messages is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be an object with 'role' and 'content'")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i}: 'content' must be a string")
    return messages


class Prompt(_Record):
    """A prompt: plain ``text`` or chat ``messages`` (exactly one of the two)."""

    id: str
    text: str | None = None
    messages: list[Message] | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_of(self) -> "Prompt":
        if (self.text is None) == (self.messages is None):
            raise ValueError("a prompt needs exactly one of 'text' or 'messages'")
        if self.messages is not None:
            _check_messages(self.messages)
        return self

    @property
    def content(self) -> PromptContent:
        return self.text if self.text is not None else self.messages  # type: ignore[return-value]


class Candidate(_Record):
    """One response to a prompt, written by ``policy`` in labeling round ``round``."""

    id: str
    prompt_id: str
    text: str
    policy: str = "unknown"
    round: int = 0
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("text")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("candidate text is empty")
        return v


def normalise_order(order: list[str] | list[list[str]]) -> list[list[str]]:
    """Accept a flat best→worst list (no ties) or a list of tie groups; return tie groups."""
    groups: list[list[str]] = []
    for item in order:
        if isinstance(item, str):
            groups.append([item])
        elif isinstance(item, list) and all(isinstance(x, str) for x in item):
            if not item:
                raise ValueError("a tie group is empty")
            groups.append(list(item))
        else:
            raise ValueError(f"ranking entries must be ids or lists of ids, got {item!r}")
    return groups


class Ranking(_Record):
    """A labeler's ranking of a prompt's candidates, best → worst, exactly as given.

    ``order`` holds tie groups: candidates in one group are tied. ``all_bad`` and ``unsafe`` are the
    labeler's flags; they do not change the order.
    """

    prompt_id: str
    order: list[list[str]]
    labeler: str | None = None
    created_at: datetime | None = None
    all_bad: bool = False
    unsafe: bool = False
    rationale: str | None = None
    # --- from the labeling app (issue 15 item 3); None elsewhere, and then not written
    ranking_id: int | None = None  # the app's row id
    supersedes: int | None = None  # a correction: the ranking_id it replaces
    current: bool | None = None  # False: a later correction replaced it
    time_on_task: float | None = None  # seconds from serving the task to this submission (server clock)
    active_seconds: float | None = None  # the labeling page's count of seconds in view (client clock)
    # --- lead tools: "adjudicated" when a reviewer settled the item (labeler = the reviewer,
    # rationale = their note); absent for a labeler's own ranking
    provenance: str | None = None
    # ---- richer feedback (issue 15 item 1): see "Preference strength" below. An imported judgement's
    # strength (issue 15 item 2) is this field too, on its source's scale
    strength: int | None = None
    strength_scale: int | None = None
    unsafe_ids: list[str] = Field(default_factory=list)

    @field_validator("order", mode="before")
    @classmethod
    def _groups(cls, v: Any) -> list[list[str]]:
        if not isinstance(v, list):
            raise ValueError("ranking must be a list")
        return normalise_order(v)

    @model_validator(mode="after")
    def _permutation(self) -> "Ranking":
        ids = self.candidate_ids
        if len(ids) < 2:
            raise ValueError(f"a ranking needs K >= 2 candidates, got K = {len(ids)}")
        seen: set[str] = set()
        for cid in ids:
            if cid in seen:
                raise ValueError(f"candidate id {cid!r} appears more than once in the ranking")
            seen.add(cid)
        _check_strength(self)
        return self

    @property
    def margin(self) -> float | None:
        """The pair margin the strength stands for (``strength_margin``); None without a strength."""
        if self.strength is None or self.strength_scale is None:
            return None
        return strength_margin(self.strength, self.strength_scale)

    @property
    def candidate_ids(self) -> list[str]:
        return [cid for group in self.order for cid in group]

    @property
    def k(self) -> int:
        return len(self.candidate_ids)

    def rank_of(self) -> dict[str, int]:
        """Candidate id → tie-group index (0 = best)."""
        return {cid: r for r, group in enumerate(self.order) for cid in group}

    def pairs(self) -> list[tuple[str, str]]:
        """All ordered (better, worse) pairs; tied candidates make no pair."""
        return [
            (a, b)
            for i, j in combinations(range(len(self.order)), 2)
            for a in self.order[i]
            for b in self.order[j]
        ]


# ---------------------------------------------------------------- preference strength (issue 15 item 1)
#
# A pairwise judgement may say how much better the first response is, on a declared scale of
# ``strength_scale`` points spanning "A much better" … "B much better" (5 points: much better,
# better, tie, better, much better; 8 points: four degrees a side, no tie point, as Llama 2's
# "significantly better, better, slightly better, negligibly better / unsure"). The order says
# which side won (a tie is the order ``[[a, b]]``, no strength); ``strength`` is the degree on the
# winner's side, 1 (the least) … ``strength_levels(scale)`` (the most).

STRENGTH_SCALES = (3, 4, 5, 6, 7, 8, 9, 10)


def strength_levels(scale: int) -> int:
    """Degrees of preference on one side of a ``scale``-point scale (an odd scale's middle is the tie)."""
    return scale // 2


def strength_margin(strength: int, scale: int) -> float:
    """The pair margin of a strength: ``(strength − 1) / (levels − 1)`` in [0, 1], 0 for the least degree.

    Llama 2's "margin small" (Touvron et al. 2023, §3.2.2, Table 27: {0, 1/3, 2/3, 1} for negligibly
    … significantly better) is this rule on the 8-point scale; it is the ``m(r)`` of their reward
    loss ``−log σ(r_θ(x, y_c) − r_θ(x, y_r) − m(r))``. A scale with one level a side gives 0.
    """
    levels = strength_levels(scale)
    return (strength - 1) / (levels - 1) if levels > 1 else 0.0


def _check_strength(r: "Ranking") -> None:
    if r.strength_scale is not None and r.strength_scale not in STRENGTH_SCALES:
        raise ValueError(f"strength_scale must be one of {', '.join(map(str, STRENGTH_SCALES))} points, got {r.strength_scale}")
    # Without a scale, a strength is an imported judgement's, on its source's scale (issue 15 item 2,
    # ``labeling.judgements``): kept and carried as given, but it stands for no margin (``margin``
    # is None), so no trainer weights it. With a scale it must be one this module can read.
    if r.strength is not None and r.strength_scale is not None:
        if len(r.order) != 2 or any(len(g) != 1 for g in r.order):
            raise ValueError("a strength applies to a strict pairwise choice (order [[winner], [loser]]), "
                             f"not to {r.order}")
        levels = strength_levels(r.strength_scale)
        if not 1 <= r.strength <= levels:
            raise ValueError(f"strength must be 1 … {levels} on a {r.strength_scale}-point scale, got {r.strength}")
    ids = set(r.candidate_ids)
    unknown = [c for c in r.unsafe_ids if c not in ids]
    if unknown:
        raise ValueError(f"unsafe_ids names candidate(s) not in the ranking: {unknown}")
    if r.unsafe_ids and not r.unsafe:
        r.unsafe = True  # naming an unsafe candidate flags the ranking


class Comparison(_Record):
    """A pairwise preference: ``chosen`` is better than ``rejected`` for ``prompt``.

    Derived from rankings (never the source of truth), and the import/export format for
    pairwise corpora. ``prompt`` is a string or chat messages; ``chosen``/``rejected`` are the
    response texts (the assistant turn).
    """

    prompt: PromptContent
    chosen: str
    rejected: str
    margin: float | None = None

    @model_validator(mode="after")
    def _valid(self) -> "Comparison":
        if isinstance(self.prompt, list):
            _check_messages(self.prompt)
        if not self.chosen.strip():
            raise ValueError("'chosen' is empty")
        if not self.rejected.strip():
            raise ValueError("'rejected' is empty")
        if self.chosen == self.rejected:
            raise ValueError("'chosen' equals 'rejected'")
        if self.margin is not None and not math.isfinite(self.margin):
            raise ValueError(f"margin must be a finite number, got {self.margin}")
        return self


# Ranking fields the labeling app fills (issue 15 item 3), written to the flat row when set.
RANKING_APP_FIELDS = ("ranking_id", "supersedes", "current", "time_on_task", "active_seconds")


class CandidateText(_Record):
    id: str
    text: str
    policy: str | None = None  # the model that wrote it, where known (issue 15: kept and exported)

    @field_validator("text")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("candidate text is empty")
        return v


class RankedExample(_Record):
    """One row of ``rankings.jsonl``: a prompt, its K candidates and one labeler's ranking.

    ``margin`` (optional) applies to every pair of the ranking (used by pairwise imports that
    carry a margin). ``source`` says where the row came from (``file:line``) for error messages.
    """

    prompt_id: str
    prompt: PromptContent
    candidates: list[CandidateText]
    ranking: Ranking
    margin: float | None = None
    source: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _ranking_from_flat(cls, data: Any) -> Any:
        # Accept the flat JSONL row: {"ranking": [...], "labeler": ..., "created_at": ...}.
        if isinstance(data, dict) and isinstance(data.get("ranking"), list):
            data = dict(data)
            ranking = {"prompt_id": data.get("prompt_id"), "order": data.pop("ranking")}
            for key in ("labeler", "created_at", "all_bad", "unsafe", "rationale", "provenance", "strength",
                        "strength_scale", "unsafe_ids", *RANKING_APP_FIELDS):
                if key in data:
                    ranking[key] = data.pop(key)
            data["ranking"] = ranking
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "RankedExample":
        if isinstance(self.prompt, list):
            _check_messages(self.prompt)
        ids = [c.id for c in self.candidates]
        if len(ids) < 2:
            raise ValueError(f"K >= 2 candidates are needed, got K = {len(ids)}")
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"candidate id(s) repeated: {sorted(dup)}")
        ranked = self.ranking.candidate_ids
        unknown = [i for i in ranked if i not in set(ids)]
        if unknown:
            raise ValueError(f"ranking names unknown candidate id(s): {unknown}")
        missing = [i for i in ids if i not in set(ranked)]
        if missing:
            raise ValueError(f"ranking is not a permutation of the candidates: {missing} not ranked")
        if self.ranking.prompt_id != self.prompt_id:
            raise ValueError("ranking.prompt_id differs from prompt_id")
        if self.margin is not None and not math.isfinite(self.margin):
            raise ValueError(f"margin must be a finite number, got {self.margin}")
        if self.margin is None and self.ranking.margin is not None:
            self.margin = self.ranking.margin  # a strength is the pair's margin unless one is given
        return self

    @property
    def k(self) -> int:
        return len(self.candidates)

    def texts_in_rank_order(self) -> tuple[list[str], list[int]]:
        """Candidate texts and their tie-group ranks (0 = best), in ranking order."""
        by_id = {c.id: c.text for c in self.candidates}
        rank = self.ranking.rank_of()
        ids = self.ranking.candidate_ids
        return [by_id[i] for i in ids], [rank[i] for i in ids]

    def comparisons(self) -> list[Comparison]:
        """All C(K, 2) pairs of different rank as Comparisons (ties and pairs of identical texts dropped)."""
        by_id = {c.id: c.text for c in self.candidates}
        out = []
        for a, b in self.ranking.pairs():
            if by_id[a] == by_id[b]:
                continue  # identical texts carry no preference (see the module docstring)
            out.append(Comparison(prompt=self.prompt, chosen=by_id[a], rejected=by_id[b], margin=self.margin))
        return out

    def to_row(self) -> dict[str, Any]:
        """The flat JSONL row (the inverse of parsing)."""
        row: dict[str, Any] = {
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "candidates": [c.model_dump(exclude_none=True) for c in self.candidates],
            "ranking": self.ranking.order,
            "labeler": self.ranking.labeler,
        }
        if self.ranking.created_at is not None:
            row["created_at"] = self.ranking.created_at.isoformat()
        for key in ("all_bad", "unsafe"):
            if getattr(self.ranking, key):
                row[key] = True
        if self.ranking.rationale:
            row["rationale"] = self.ranking.rationale
        if self.ranking.provenance is not None:
            row["provenance"] = self.ranking.provenance
        if self.ranking.strength is not None:
            row["strength"] = self.ranking.strength
        if self.ranking.strength_scale is not None:
            row["strength_scale"] = self.ranking.strength_scale
        if self.ranking.unsafe_ids:
            row["unsafe_ids"] = list(self.ranking.unsafe_ids)
        if self.margin is not None:
            row["margin"] = self.margin
        for key in RANKING_APP_FIELDS:
            if getattr(self.ranking, key) is not None:
                row[key] = getattr(self.ranking, key)
        return row

    @classmethod
    def from_comparison(cls, comp: Comparison, prompt_id: str, source: str | None = None) -> "RankedExample":
        """A pairwise comparison as a K = 2 ranking (ids ``chosen`` and ``rejected``)."""
        return cls(
            prompt_id=prompt_id,
            prompt=comp.prompt,
            candidates=[CandidateText(id="chosen", text=comp.chosen), CandidateText(id="rejected", text=comp.rejected)],
            ranking=Ranking(prompt_id=prompt_id, order=[["chosen"], ["rejected"]]),
            margin=comp.margin,
            source=source,
        )


class RenderedPrompt(str):
    """A prompt as a policy reads it (its chat template, or HH-style text) that remembers the prompt
    it was rendered from, ``content`` (text or chat messages).

    PPO hands these to the reward function: a function sees the policy's text, a plain ``str``; a
    reward model renders ``content`` with its own tokenizer (``rankloop.reward.model.render``), so it
    reads in PPO exactly what it read in training.
    """

    content: PromptContent

    def __new__(cls, text: str, content: PromptContent) -> "RenderedPrompt":
        self = super().__new__(cls, text)
        self.content = content
        return self

    def __reduce__(self):  # pickling (e.g. to another process) keeps ``content``
        return (RenderedPrompt, (str(self), self.content))


def prompt_content(prompt: "PromptContent | Prompt | RenderedPrompt") -> PromptContent:
    """The prompt as given — text or chat messages — from a record, a policy's rendering or itself."""
    if isinstance(prompt, (RenderedPrompt, Prompt)):
        return prompt.content
    return prompt


def render_prompt(prompt: PromptContent) -> str:
    """Chat messages as HH-RLHF-style plain text (``\\n\\nHuman: …\\n\\nAssistant:``).

    Used where a tokenizer has no chat template; plain-text prompts pass through unchanged.
    """
    if isinstance(prompt, str):
        return prompt
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    text = "".join(f"\n\n{names.get(m['role'], m['role'].title())}: {m['content']}" for m in prompt)
    if prompt[-1]["role"] != "assistant":
        text += "\n\nAssistant:"
    return text


ROLES = ("system", "user", "assistant")
REVIEW = ("pending", "accepted", "rejected")


def check_conversation(messages: list[Message], what: str = "messages") -> list[Message]:
    """A conversation a demonstration can answer or hold: known roles only, and every assistant
    turn (and the end of a prompt) answering the user's turn before it."""
    _check_messages(messages)
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise ValueError(f"{what}[{i}]: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        if m["role"] == "assistant" and (i == 0 or messages[i - 1]["role"] != "user"):
            raise ValueError(f"{what}[{i}]: an assistant turn must follow a user turn")
    return messages


class Demonstration(_Record):
    """What a labeler wrote for a prompt: SFT's input (InstructGPT §3.5, "demonstrations of the
    desired behavior").

    Either ``response`` — the text answering ``prompt`` (plain text, or a conversation whose last
    turn is the user's) — or ``messages``: a whole conversation whose assistant turns are the
    demonstration (``prompt`` then stays empty). ``edited_from`` names the model draft (a
    candidate id) the labeler started from; ``None`` means written from scratch. ``review`` is the
    reviewer's verdict; a trainer never trains on a rejected one. ``source`` (``file:line``) is set by
    readers for error messages and not written out.
    """

    prompt_id: str
    prompt: PromptContent | None = None
    response: str | None = None
    messages: list[Message] | None = None
    labeler: str | None = None
    edited_from: str | None = None
    review: str = "pending"
    created_at: datetime | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    source: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _valid(self) -> "Demonstration":
        if self.review not in REVIEW:
            raise ValueError(f"review must be one of {', '.join(REVIEW)}, got {self.review!r}")
        if (self.response is None) == (self.messages is None):
            raise ValueError("a demonstration needs exactly one of 'response' (with 'prompt') or 'messages'")
        if self.response is not None:
            if self.prompt is None:
                raise ValueError("a 'response' needs the 'prompt' it answers")
            if not self.response.strip():
                raise ValueError("the response is empty" if not self.response else "the response is only whitespace")
            if isinstance(self.prompt, list):
                check_conversation(self.prompt, "prompt")
                if self.prompt[-1]["role"] != "user":
                    raise ValueError(f"the prompt's last turn is the {self.prompt[-1]['role']}'s, not the user's: "
                                     "a response answers the user")
            elif not self.prompt.strip():
                raise ValueError("the prompt is empty")
        else:
            if self.prompt is not None:
                raise ValueError("'messages' holds the whole conversation: leave 'prompt' out")
            check_conversation(self.messages)
            if self.messages[-1]["role"] != "assistant":
                raise ValueError(f"the conversation ends with the {self.messages[-1]['role']}'s turn: "
                                 "its last turn must be the assistant's (the demonstration)")
            for i, m in enumerate(self.messages):
                if m["role"] == "assistant" and not m["content"].strip():
                    raise ValueError(f"messages[{i}]: the assistant turn is empty")
        return self

    @property
    def conversation(self) -> list[Message] | None:
        """The whole exchange as messages (None for a plain-text prompt and response)."""
        if self.messages is not None:
            return self.messages
        if isinstance(self.prompt, list):
            return [*self.prompt, {"role": "assistant", "content": self.response}]
        return None

    def to_row(self) -> dict[str, Any]:
        """The JSONL row of ``demonstrations.jsonl`` (the inverse of parsing)."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"source"})


# ---------------------------------------------------------------- ratings (issue 15 item 1)

LIKERT = (1, 7)  # InstructGPT's overall quality scale (Ouyang et al. 2022, App. B.2: 1–7)
MAX_LABELS = 32


class Rating(_Record):
    """A labeler's judgement of one candidate on its own: a Likert quality ``score`` (1–7),
    whether it is ``acceptable``, metadata ``labels`` (InstructGPT's "fails to follow the
    instruction", "hallucination", "harmful", …) and a ``comment``. One row of ``ratings.jsonl``.

    ``prompt`` and ``text`` (the candidate's) are optional on the record but written by the export,
    so a trainer reads ratings without the database (``RewardTrainConfig.ratings`` needs them).
    ``source`` (``file:line``) is set by readers for error messages and not written out.
    """

    prompt_id: str
    candidate_id: str
    score: int | None = None
    acceptable: bool | None = None
    labels: list[str] = Field(default_factory=list)
    comment: str | None = None
    labeler: str | None = None
    created_at: datetime | None = None
    prompt: PromptContent | None = None
    text: str | None = None
    source: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _valid(self) -> "Rating":
        lo, hi = LIKERT
        if self.score is not None and not lo <= self.score <= hi:
            raise ValueError(f"score must be a Likert rating {lo} … {hi}, got {self.score}")
        if len(self.labels) > MAX_LABELS:
            raise ValueError(f"at most {MAX_LABELS} labels, got {len(self.labels)}")
        for i, label in enumerate(self.labels):
            if not label.strip():
                raise ValueError(f"labels[{i}] is empty")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels repeated: {self.labels}")
        if self.score is None and self.acceptable is None and not self.labels and not (self.comment or "").strip():
            raise ValueError("a rating needs at least one of score, acceptable, labels or comment")
        if isinstance(self.prompt, list):
            _check_messages(self.prompt)
        if self.text is not None and not self.text.strip():
            raise ValueError("the candidate text is empty")
        return self

    def to_row(self) -> dict[str, Any]:
        """The JSONL row of ``ratings.jsonl`` (the inverse of parsing)."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"source"})


def orderings_from_ratings(ratings: Sequence[Rating]) -> list[RankedExample]:
    """Within-prompt orderings from Likert scores: one ``RankedExample`` per (prompt, labeler)
    whose scored candidates have at least two different scores, best score first, equal scores
    tied (so they make no pair).

    Per labeler, because a Likert score is read on the labeler's own scale (one labeler's 5 is
    another's 4): only scores given by one person to responses of one prompt are compared, the
    relative judgement a ranking would have recorded (InstructGPT reports Likert and rankings
    agreeing this way). Ratings without a score, prompt or text are left out.
    """
    groups: dict[tuple[str, str | None], list[Rating]] = {}
    for r in ratings:
        if r.score is not None and r.text is not None and r.prompt is not None:
            groups.setdefault((r.prompt_id, r.labeler), []).append(r)
    out = []
    for (prompt_id, labeler), rs in groups.items():
        latest: dict[str, Rating] = {}
        for r in rs:  # a candidate rated twice by one labeler: the later rating stands
            latest[r.candidate_id] = r
        rs = list(latest.values())
        scores = sorted({r.score for r in rs}, reverse=True)
        if len(scores) < 2:
            continue
        order = [[r.candidate_id for r in rs if r.score == s] for s in scores]
        out.append(RankedExample(
            prompt_id=prompt_id, prompt=rs[0].prompt,
            candidates=[CandidateText(id=r.candidate_id, text=r.text) for r in rs],
            ranking=Ranking(prompt_id=prompt_id, order=order, labeler=labeler),
            source=rs[0].source,
        ))
    return out


# What a trainer does with the labeler's flags (issue 15 item 1). The options, named alike in
# RewardTrainConfig, DPOConfig and the TRL export:
#   all_bad  "keep": an all-bad ranking's order is a preference like any other (its best is only
#                    the least bad);  "drop": an all-bad ranking gives no pair (nothing in it is a
#                    response to move towards, so it makes no "chosen").
#   unsafe   "keep": as ranked;  "never_chosen": an unsafe candidate is never the better of a pair.
AllBadPolicy = Literal["keep", "drop"]
UnsafePolicy = Literal["keep", "never_chosen"]


def apply_flags(examples: Sequence[RankedExample], all_bad: str = "keep", unsafe: str = "keep") -> list[RankedExample]:
    """``examples`` with the labeler's flags applied (the policies above); unchanged rows are the same objects.

    ``unsafe="never_chosen"``: an unsafe candidate stays where it is chosen over nothing (in the last
    tie group), so the pairs that prefer a safe response to it are kept; anywhere higher it is taken out
    of the ranking with its pairs. A ranking flagged unsafe that does not say which candidate is
    (``unsafe_ids`` empty) is dropped whole, as is one left with fewer than two candidates.
    """
    if all_bad not in ("keep", "drop"):
        raise ValueError(f"all_bad must be 'keep' or 'drop', got {all_bad!r}")
    if unsafe not in ("keep", "never_chosen"):
        raise ValueError(f"unsafe must be 'keep' or 'never_chosen', got {unsafe!r}")
    out = []
    for ex in examples:
        r = ex.ranking
        if all_bad == "drop" and r.all_bad:
            continue
        if unsafe == "never_chosen" and r.unsafe:
            if not r.unsafe_ids:
                continue
            bad = set(r.unsafe_ids)
            last = len(r.order) - 1
            order = [[c for c in g if c not in bad or i == last] for i, g in enumerate(r.order)]
            order = [g for g in order if g]
            kept = {c for g in order for c in g}
            if len(kept) < 2 or len(order) < 2:
                continue
            if len(kept) < ex.k:
                ex = ex.model_copy(update={
                    "candidates": [c for c in ex.candidates if c.id in kept],
                    "ranking": r.model_copy(update={"order": order, "unsafe_ids": [c for c in r.unsafe_ids if c in kept]}),
                })
        out.append(ex)
    return out
