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
from typing import Any, Sequence, Union

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
    strength: int | None = None  # how strongly the preference is held, on its source's scale (issue 15)

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
        return self

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
                        *RANKING_APP_FIELDS):
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
