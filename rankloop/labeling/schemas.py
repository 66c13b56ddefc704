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


class UserUpdate(_Body):
    active: Optional[bool] = None
    password: Optional[str] = Field(None, min_length=8, max_length=1024)
    role: Optional[Role] = None


def _printable(v: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError("must not contain control characters (line breaks, tabs, …)")
    return v


# ---------------------------------------------------------------- feedback (issue 15 item 1)
# A project's optional feedback settings, and the per-candidate ratings a submission carries.

MAX_LABEL = 64  # characters of one metadata label
MAX_FEEDBACK_LABELS = 32
MAX_COMMENT = 5_000

# InstructGPT's metadata labels (Ouyang et al. 2022, Table 3 / App. B): a starting list for a lead.
INSTRUCTGPT_LABELS = ("Fails to follow the instruction", "Hallucination", "Harmful", "Inappropriate for a customer assistant",
                      "Sexual content", "Violent content", "Encourages violence", "Denigrates a protected class",
                      "Gives harmful advice", "Expresses an opinion", "Expresses a moral judgment")


class FeedbackSettings(_Body):
    """What a labeler may give besides the ranking. Each is off unless set."""

    strength_scale: Optional[int] = Field(None, description="Pairwise projects: points of the preference-strength "
                                          "scale, e.g. 5 (A much better, A better, tie, B better, B much better) or 8 "
                                          "(four degrees a side, no tie point); a strict choice then needs a strength.")
    acceptability: bool = Field(False, description="Ask, per candidate, whether it is acceptable.")
    likert: bool = Field(False, description="Ask, per candidate, a 1–7 quality rating (InstructGPT's Likert scale).")
    labels: list[Annotated[str, Field(min_length=1, max_length=MAX_LABEL)]] = Field(
        default_factory=list, max_length=MAX_FEEDBACK_LABELS,
        description="Metadata labels a labeler may tick per candidate (e.g. InstructGPT's: 'Hallucination', 'Harmful', …).")
    comments: bool = Field(False, description="Offer a free-text comment per candidate.")

    @field_validator("strength_scale")
    @classmethod
    def _scale(cls, v: Optional[int]) -> Optional[int]:
        from rankloop.records import STRENGTH_SCALES

        if v is not None and v not in STRENGTH_SCALES:
            raise ValueError(f"must be one of {', '.join(map(str, STRENGTH_SCALES))} points")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str]) -> list[str]:
        for label in v:
            _printable(label)
            if label != label.strip():
                raise ValueError(f"label {label!r} has surrounding spaces")
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"labels repeated: {dup}")
        return v

    @property
    def per_candidate(self) -> bool:
        return self.acceptability or self.likert or bool(self.labels) or self.comments


class RatingIn(_Body):
    """One candidate's rating in a submission; each part only if the project asks for it."""

    candidate_id: ExternalId
    score: Optional[int] = Field(None, ge=1, le=7, description="Likert quality, 1 (worst) … 7 (best)")
    acceptable: Optional[bool] = None
    labels: list[Annotated[str, Field(max_length=MAX_LABEL)]] = Field(default_factory=list, max_length=MAX_FEEDBACK_LABELS)
    comment: Optional[str] = Field(None, max_length=MAX_COMMENT)


class RatingOut(BaseModel):
    ranking_id: int
    item_id: int
    prompt_id: str
    labeler: str
    candidate_id: str
    score: Optional[int]
    acceptable: Optional[bool]
    labels: list[str]
    comment: Optional[str]
    created_at: datetime


class ProjectCreate(_Body):
    name: str = Field(min_length=1, max_length=128)
    instructions: str = Field("", max_length=MAX_INSTRUCTIONS)
    k: int = Field(4, ge=2, le=16, description="candidates shown per item (2 in pairwise mode)")
    mode: Mode = "ranking"
    overlap: int = Field(1, ge=1, le=100, description="distinct labelers per item")
    gold_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of served tasks that are gold items")
    lease_seconds: int = Field(1800, ge=5, le=7 * 24 * 3600, description="an unfinished task returns to the queue after this")
    feedback: Optional[FeedbackSettings] = Field(None, description="optional feedback besides the ranking (issue 15)")

    _name = field_validator("name")(_printable)


class ProjectUpdate(_Body):
    instructions: Optional[str] = Field(None, max_length=MAX_INSTRUCTIONS)
    gold_rate: Optional[float] = Field(None, ge=0.0, le=1.0)
    lease_seconds: Optional[int] = Field(None, ge=5, le=7 * 24 * 3600)
    feedback: Optional[FeedbackSettings] = None


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
    feedback: Optional[FeedbackSettings] = None


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
    feedback: Optional[FeedbackSettings] = None


class SubmitIn(_Body):
    order: Order = Field(description="candidate ids best → worst; an inner list is a tie group")
    idempotency_key: str = Field(min_length=1, max_length=128)
    all_bad: bool = False
    unsafe: bool = False
    rationale: Optional[str] = Field(None, max_length=MAX_RATIONALE)
    # ---- feedback (issue 15 item 1): checked against the project's FeedbackSettings
    strength: Optional[int] = Field(None, ge=1, description="pairwise: how much better the first is, "
                                    "1 … strength_scale // 2 (the project's scale)")
    unsafe_ids: list[ExternalId] = Field(default_factory=list, max_length=MAX_GROUPS,
                                         description="the candidates that are unsafe (sets unsafe)")
    ratings: list[RatingIn] = Field(default_factory=list, max_length=MAX_GROUPS, description="per-candidate ratings")


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
    strength_scale: Optional[int] = None
    margin: Optional[float] = None
    unsafe_ids: list[str] = Field(default_factory=list)


class Message(BaseModel):
    detail: str


TokenOut.model_rebuild()
