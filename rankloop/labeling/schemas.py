"""Typed request and response bodies of the REST API (they make the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rankloop.records import Candidate, Prompt, PromptContent

Role = Literal["admin", "labeler", "reviewer"]  # reviewer: reviews disputed items, administers nothing
Mode = Literal["ranking", "pairwise", "demonstration"]  # demonstration: people write the response

# Bounds on every string and list a client sends (issue 11 item 1): the database columns' sizes,
# and room for real use (a long chat prompt, K = 16 candidates), never unbounded.
MAX_EXTERNAL_ID = 255  # prompt and candidate ids, policy names: String(255) columns
MAX_TEXT = 200_000  # characters of one prompt or candidate
MAX_INSTRUCTIONS = 20_000
MAX_RATIONALE = 10_000
MAX_ACTIVE_SECONDS = 7 * 24 * 3600.0  # a client-reported time in view: a lease's maximum
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
    k: int = Field(4, ge=2, le=16, description="candidates shown per item (2 in pairwise mode; unused, stored as 0, "
                   "in demonstration mode, where a prompt has any number of drafts)")
    mode: Mode = "ranking"
    overlap: int = Field(1, ge=1, le=100, description="distinct labelers per item")
    gold_rate: float = Field(0.0, ge=0.0, le=1.0, description="share of served tasks that are gold items")
    lease_seconds: int = Field(1800, ge=5, le=7 * 24 * 3600, description="an unfinished task returns to the queue after this")
    edit_window_seconds: int = Field(600, ge=0, le=30 * 24 * 3600, description="a labeler may correct a submission "
                                     "this long after first submitting it (0: never)")
    feedback: Optional[FeedbackSettings] = Field(None, description="optional feedback besides the ranking (issue 15)")

    _name = field_validator("name")(_printable)


class ProjectUpdate(_Body):
    instructions: Optional[str] = Field(None, max_length=MAX_INSTRUCTIONS)
    gold_rate: Optional[float] = Field(None, ge=0.0, le=1.0)
    lease_seconds: Optional[int] = Field(None, ge=5, le=7 * 24 * 3600)
    edit_window_seconds: Optional[int] = Field(None, ge=0, le=30 * 24 * 3600)
    # --- lead tools: live settings (services.projects.update_project re-plans the slots for overlap)
    overlap: Optional[int] = Field(None, ge=1, le=100, description="distinct labelers per item: raising it makes the "
                                   "new slots for every item; lowering it retires open slots, never done or leased ones")
    qualify_items: Optional[int] = Field(None, ge=0, le=1000, description="gold items a labeler must answer first (0: none)")
    qualify_accuracy: Optional[float] = Field(None, ge=0.0, le=1.0, description="gold accuracy needed to qualify")
    pause_below: Optional[float] = Field(None, ge=0.0, le=1.0, description="pause a labeler whose rolling gold accuracy "
                                         "falls below this (send pause_off=true to turn pausing off)")
    pause_off: Optional[bool] = Field(None, description="true: turn pausing off")
    pause_window: Optional[int] = Field(None, ge=1, le=1000, description="gold answers in the rolling window")
    review_below: Optional[float] = Field(None, ge=0.0, le=1.0, description="items whose agreement is below this are reviewed")
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
    edit_window_seconds: int = 600
    # --- lead tools
    qualify_items: int = 0
    qualify_accuracy: float = 0.0
    pause_below: Optional[float] = None
    pause_window: int = 10
    review_below: float = 0.6
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
    project_name: str = ""  # (issue 15 item 3: every task page names its project)
    mode: Mode
    instructions: str
    prompt_id: str
    prompt: PromptContent
    candidates: list[CandidateView] = Field(description="ranking: the K candidates, shuffled per labeler; "
                                            "demonstration: the model drafts, in import order (maybe none)")
    lease_expires: datetime
    # demonstration tasks (issue 12): ``kind`` is ``mode`` under the name clients dispatch on
    kind: Mode = "ranking"
    draft: Optional[CandidateView] = Field(None, description="demonstration: the first model draft, or none")
    saved: Optional["SavedDraft"] = Field(None, description="demonstration: your autosaved text for this task "
                                          "(only ever yours)")
    feedback: Optional[FeedbackSettings] = None


class SubmitIn(_Body):
    order: Order = Field(description="candidate ids best → worst; an inner list is a tie group")
    idempotency_key: str = Field(min_length=1, max_length=128)
    all_bad: bool = False
    unsafe: bool = False
    rationale: Optional[str] = Field(None, max_length=MAX_RATIONALE)
    active_seconds: Optional[float] = Field(None, ge=0, le=MAX_ACTIVE_SECONDS,
                                            description="the page's own count of seconds the task was in view (optional)")
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
    skipped: int = 0  # (issue 15 item 3)
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
    rankings: int = Field(description="current rankings (a corrected one counts once)")
    labelers: list[LabelerStats]
    # a labeler's day (issue 15 item 3)
    skips: int = 0
    skip_reasons: dict[str, int] = Field(default_factory=dict)
    corrections: int = Field(0, description="rows that supersede an earlier ranking (edits)")


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
    # a labeler's day (issue 15 item 3)
    supersedes_id: Optional[int] = None
    current: bool = True
    time_on_task: Optional[float] = Field(None, description="seconds from serving the task to this submission")
    active_seconds: Optional[float] = None
    # feedback (issue 15 item 1); an imported judgement's strength too (item 2), maybe without a scale
    strength: Optional[int] = None
    strength_scale: Optional[int] = None
    margin: Optional[float] = None
    unsafe_ids: list[str] = Field(default_factory=list)
    # imported judgements (issue 15 item 2)
    source: Optional[str] = Field(None, description="file:line of an imported judgement; null when collected here")


# ---------------------------------------------------------------- a labeler's day (issue 15 item 3)

# What the ranking page offers as skip reasons; the API takes any short reason (scripts, other pages).
SKIP_REASONS = {
    "unclear": "The prompt or the responses are unclear",
    "expertise": "Needs knowledge I do not have",
    "offensive": "Content I do not want to judge",
    "broken": "Broken task (missing or garbled text)",
    "other": "Other",
}
MAX_SKIP_NOTE = 1_000


class SkipIn(_Body):
    reason: str = Field(min_length=1, max_length=64, description=f"why; the page offers {sorted(SKIP_REASONS)}")
    note: Optional[str] = Field(None, max_length=MAX_SKIP_NOTE, description="free text (optional)")

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        v = _printable(v.strip())
        if not v:
            raise ValueError("must not be blank")
        return v


class SkipOut(BaseModel):
    skip_id: int
    task_id: int
    duplicate: bool = Field(description="true when this task was already skipped (nothing new written)")


class MyProgressOut(BaseModel):
    """The counter on the task page: one labeler, one project."""

    project_id: int
    project_name: str
    done_today: int = Field(description="rankings submitted since 00:00 UTC (corrections not counted)")
    done: int = Field(description="rankings submitted in this project")
    remaining: int = Field(description="items still open to you (the one you hold included)")
    skipped: int


class MyRankingOut(BaseModel):
    """One of a labeler's own current rankings ("my recent submissions")."""

    ranking_id: int
    project_id: int
    project_name: str
    item_id: int
    prompt_id: str
    order: list[list[str]]
    created_at: datetime
    supersedes_id: Optional[int]
    editable_until: datetime = Field(description="the first submission's time plus the project's edit window")
    editable: bool


class EditOut(BaseModel):
    ranking_id: int = Field(description="the new row, which is now the current ranking")
    supersedes_id: int
    duplicate: bool = Field(description="true when this idempotency key was already stored (nothing new written)")


class PasswordChange(_Body):
    current_password: str = Field(max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class Message(BaseModel):
    detail: str


# ---------------------------------------------------------------- demonstrations (issue 12 item 1)

Review = Literal["pending", "accepted", "rejected"]


class SavedDraft(BaseModel):
    text: str
    edited_from: Optional[str] = None
    updated_at: datetime


class DraftIn(_Body):
    """An autosave of what the labeler is writing (empty is fine: they may have deleted it all)."""

    text: str = Field(max_length=MAX_TEXT)
    edited_from: Optional[ExternalId] = Field(None, description="the draft (candidate id) this text started from")


class DraftOut(BaseModel):
    task_id: int
    saved: SavedDraft
    lease_expires: datetime = Field(description="autosaving renews the task's lease: a labeler still writing keeps it")


class DemonstrationIn(_Body):
    response: str = Field(max_length=MAX_TEXT, description="the response the labeler wrote; not empty or only whitespace")
    edited_from: Optional[ExternalId] = Field(None, description="the draft (candidate id) it was edited from; "
                                              "null when written from scratch")
    idempotency_key: str = Field(min_length=1, max_length=128)


class DemonstrationSubmitOut(BaseModel):
    demonstration_id: int
    task_id: int
    duplicate: bool = Field(description="true when this idempotency key was already stored (nothing new written)")


class ReviewIn(_Body):
    verdict: Literal["accepted", "rejected"]
    text: Optional[str] = Field(None, max_length=MAX_TEXT, description="with accepted: the reviewer's edit, kept as the "
                                "accepted text (the labeler's original stays as it was)")


class DemonstrationOut(BaseModel):
    id: int
    task_id: int
    item_id: int
    project_id: int
    prompt_id: str
    prompt: PromptContent
    labeler: str
    response: str = Field(description="as the labeler wrote it")
    edited_from: Optional[str]
    review: Review
    accepted_text: Optional[str] = Field(description="the reviewer's edit, if they made one (exported instead of response)")
    reviewer: Optional[str]
    reviewed_at: Optional[datetime]
    created_at: datetime


# ---------------------------------------------------------------- lead tools (invites, review, qualification, dashboard)

InviteRole = Literal["labeler", "reviewer"]  # an admin is never made through a link
LabelerStateName = Literal["qualifying", "qualified", "failed", "paused"]
MAX_NOTE = 10_000


class InviteCreate(_Body):
    role: InviteRole = "labeler"
    days: float = Field(7.0, gt=0, le=90, description="the link expires after this many days")
    username: Optional[str] = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$",
                                    description="preset the username (else the invitee chooses one)")


class InviteOut(BaseModel):
    id: int
    project_id: int
    role: InviteRole
    username: Optional[str]
    created_at: datetime
    expires_at: datetime
    used_at: Optional[datetime]
    used_by: Optional[str]
    status: Literal["open", "used", "expired"]


class InviteCreated(InviteOut):
    token: str = Field(description="the link's secret: shown once, only its hash is stored")
    path: str = Field(description="the link, relative to the server: /invite/<token>")


class InviteAccept(_Body):
    username: Optional[str] = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$")
    password: str = Field(min_length=8, max_length=1024)


class AdjudicationIn(_Body):
    order: Order = Field(description="the adjudicated ranking, best → worst; inner lists are ties")
    note: Optional[str] = Field(None, max_length=MAX_NOTE)


class AdjudicationOut(BaseModel):
    id: int
    item_id: int
    reviewer: str
    order: list[list[str]]
    note: Optional[str]
    created_at: datetime


class ReviewRanking(BaseModel):
    labeler: str
    order: list[list[str]]
    all_bad: bool
    unsafe: bool
    rationale: Optional[str]
    created_at: datetime


class ReviewQueueEntry(BaseModel):
    item_id: int
    prompt_id: str
    rankings: int
    agreement: float
    adjudicated: bool


class ReviewItem(BaseModel):
    item_id: int
    project_id: int
    prompt_id: str
    prompt: PromptContent
    candidates: list[CandidateView]
    rankings: list[ReviewRanking]
    consensus: list[list[str]]
    agreement: Optional[float]
    adjudication: Optional[AdjudicationOut]


class LabelerStateOut(BaseModel):
    user_id: int
    username: str
    state: LabelerStateName
    gold_answered: int = Field(description="gold answers that count (since the last reset)")
    accuracy: Optional[float] = Field(description="the accuracy the state was decided on")


class LabelerStateIn(_Body):
    state: Literal["qualified", "qualifying"] = Field(description="qualified: un-pause (or pass); qualifying: start over")


class LabelerDashboard(BaseModel):
    username: str
    state: LabelerStateName
    rankings: int
    agreement_with_consensus: Optional[float] = Field(description="pairwise agreement with the other labelers' consensus")
    gold_answered: int
    gold_accuracy: Optional[float]
    median_seconds: Optional[float] = Field(description="median seconds from serving a task to its submission")
    per_day: dict[str, int] = Field(description="rankings per UTC day, YYYY-MM-DD")
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
TaskOut.model_rebuild()
