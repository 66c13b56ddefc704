"""Typed request and response bodies of the REST API (they make the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rankloop.records import Candidate, Prompt, PromptContent

Role = Literal["admin", "labeler"]
Mode = Literal["ranking", "pairwise"]

# Bounds on every string and list a client sends (issue 11 item 1): the database columns' sizes,
# and room for real use (a long chat prompt, K = 16 candidates), never unbounded.
MAX_EXTERNAL_ID = 255  # prompt and candidate ids, policy names: String(255) columns
MAX_TEXT = 200_000  # characters of one prompt or candidate
MAX_INSTRUCTIONS = 20_000
MAX_RATIONALE = 10_000
MAX_GROUPS = 64  # tie groups in a ranking (K is at most 16; room for mistakes to be named)
MAX_PROMPTS = 100_000  # per import request
MAX_CANDIDATES = 16 * MAX_PROMPTS

ExternalId = Annotated[str, Field(max_length=MAX_EXTERNAL_ID)]
_Group = Annotated[list[ExternalId], Field(max_length=MAX_GROUPS)]
Order = Annotated[list[_Group], Field(max_length=MAX_GROUPS)] | Annotated[list[ExternalId], Field(max_length=MAX_GROUPS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_Body):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class TokenOut(BaseModel):
    token: str
    token_type: str = "bearer"
    id: Optional[int] = None
    expires_at: Optional[datetime] = None
    user: "UserOut"


class TokenCreate(_Body):
    name: str = Field("script", min_length=1, max_length=128)
    days: Optional[float] = Field(None, gt=0, description="lifetime in days (default and maximum: the server's "
                                  "token_days and token_max_days, 90 and 365 unless configured)")


class TokenInfo(BaseModel):
    """A session or token as listed: never its secret."""

    id: int
    user_id: int
    username: str
    kind: Literal["session", "api"]
    name: Optional[str]
    created_at: datetime
    expires_at: Optional[datetime]
    current: bool = Field(False, description="the one this request is authenticated with")


class UserCreate(_Body):
    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=8, max_length=1024)
    role: Role = "labeler"


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    username: str
    role: Role
    active: bool
    external: bool = Field(False, description="made by an import for a rater of imported judgements; cannot log in")


class UserUpdate(_Body):
    active: Optional[bool] = None
    password: Optional[str] = Field(None, min_length=8, max_length=1024)
    role: Optional[Role] = None


def _printable(v: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError("must not contain control characters (line breaks, tabs, …)")
    return v


class ProjectCreate(_Body):
    name: str = Field(min_length=1, max_length=128)
    instructions: str = Field("", max_length=MAX_INSTRUCTIONS)
    k: int = Field(4, ge=2, le=16, description="candidates shown per item (2 in pairwise mode)")
    mode: Mode = "ranking"
    overlap: int = Field(1, ge=1, le=100, description="distinct labelers per item")
    gold_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of served tasks that are gold items")
    lease_seconds: int = Field(1800, ge=5, le=7 * 24 * 3600, description="an unfinished task returns to the queue after this")

    _name = field_validator("name")(_printable)


class ProjectUpdate(_Body):
    instructions: Optional[str] = Field(None, max_length=MAX_INSTRUCTIONS)
    gold_rate: Optional[float] = Field(None, ge=0.0, le=1.0)
    lease_seconds: Optional[int] = Field(None, ge=5, le=7 * 24 * 3600)


class ProjectOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    instructions: str
    k: int
    mode: Mode
    overlap: int
    gold_rate: float
    lease_seconds: int


class GoldIn(_Body):
    prompt_id: ExternalId
    order: Order = Field(description="best → worst; inner lists are ties")


class ImportIn(_Body):
    """Prompts and their candidates (``rankloop sample`` output); ``gold`` marks items whose
    correct ranking is known."""

    prompts: list[Prompt] = Field(max_length=MAX_PROMPTS)
    candidates: list[Candidate] = Field(max_length=MAX_CANDIDATES)
    gold: list[GoldIn] = Field(default_factory=list, max_length=MAX_PROMPTS)


class ImportOut(BaseModel):
    prompts: int
    candidates: int
    items: int
    gold_items: int
    slots: int


class MemberIn(_Body):
    username: str = Field(max_length=64)


class CandidateView(BaseModel):
    id: str
    text: str


class TaskOut(BaseModel):
    task_id: int
    project_id: int
    mode: Mode
    instructions: str
    prompt_id: str
    prompt: PromptContent
    candidates: list[CandidateView]
    lease_expires: datetime


class SubmitIn(_Body):
    order: Order = Field(description="candidate ids best → worst; an inner list is a tie group")
    idempotency_key: str = Field(min_length=1, max_length=128)
    all_bad: bool = False
    unsafe: bool = False
    rationale: Optional[str] = Field(None, max_length=MAX_RATIONALE)


class SubmitOut(BaseModel):
    ranking_id: int
    task_id: int
    duplicate: bool = Field(description="true when this idempotency key was already stored (nothing new written)")


class LabelerStats(BaseModel):
    username: str
    done: int
    leased: int
    gold_done: int
    gold_accuracy: Optional[float]
    # issue 15 item 2: judgements imported under this name, and how this labeler agrees with themself
    external: bool = Field(False, description="an imported rater's account (cannot log in)")
    imported: int = Field(0, description="imported judgements by this labeler")
    repeat_items: int = Field(0, description="items this labeler judged more than once")
    self_agreement: Optional[float] = Field(None, description="pairwise agreement among this labeler's own repeats")


class ProgressOut(BaseModel):
    project_id: int
    items: int
    gold_items: int
    slots: int
    slots_done: int
    slots_leased: int
    items_complete: int
    rankings: int
    labelers: list[LabelerStats]


class AgreementOut(BaseModel):
    items_multi: int = Field(description="items ranked by two or more labelers")
    pairwise_agreement: Optional[float] = Field(description="share of (labeler pair, candidate pair) judgements that agree")
    krippendorff_alpha: Optional[float] = Field(description="ordinal alpha over (item, candidate) units, mid-ranks as values")
    # issue 15 item 2: the figures above take each labeler's first judgement of an item; repeats go here
    repeat_items: int = Field(0, description="(labeler, item) pairs judged more than once")
    self_agreement: Optional[float] = Field(None, description="pairwise agreement among labelers' repeats of their own "
                                            "judgements, pooled")


class ConsensusOut(BaseModel):
    item_id: int
    prompt_id: str
    rankings: int
    consensus: list[list[str]]
    agreement: Optional[float]
    is_gold: bool


class RankingOut(BaseModel):
    id: int
    task_id: int
    item_id: int
    prompt_id: str
    labeler: str
    order: list[list[str]]
    all_bad: bool
    unsafe: bool
    rationale: Optional[str]
    created_at: datetime
    is_gold: bool
    strength: Optional[int] = None
    source: Optional[str] = Field(None, description="file:line of an imported judgement; null when collected here")


class Message(BaseModel):
    detail: str


# ---------------------------------------------------------------- importing judgements (issue 15 item 2)


class JudgementsImportOut(BaseModel):
    batch: str = Field(description="hash of the file: the same file is refused a second time")
    rows: int = Field(description="non-blank rows read")
    judgements: int = Field(description="judgements stored")
    skipped: int = Field(description="bad rows skipped (only with skip_invalid)")
    errors: list[str] = Field(description="the first bad rows, file:line: what is wrong")
    prompts: int = Field(description="new prompts")
    candidates: int = Field(description="new candidates")
    items: int = Field(description="new items")
    items_judged: int = Field(description="items these judgements are of (new or already there)")
    raters: int
    raters_new: int = Field(description="external rater accounts made")
    repeats: int = Field(description="judgements repeating their rater's earlier judgement of the same item")
    open_slots: int = Field(description="places opened for labelers here (only with open_slots)")


TokenOut.model_rebuild()
