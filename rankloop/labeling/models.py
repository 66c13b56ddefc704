"""The labeling database (SQLAlchemy 2 typed ORM). The schema itself is owned by the Alembic
migrations in ``migrations/versions``; these classes must match them (a test checks).

    User ─┬─ AuthToken (browser sessions and API tokens, stored as SHA-256 of the secret)
          └─ Member ── Project ── PromptRow ── CandidateRow
                          └────── Item (one prompt's K candidates, or a pair) ── Slot ── RankingRow

A ``Slot`` is one of an item's ``overlap`` places (created at import) or a gold item's place for one
labeler (created when served). Claiming a slot is the assignment; ``RankingRow`` is what the
labeler gave, kept as given and never edited: a correction is a new row that supersedes it, and a
``Skip`` records a task given back.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if dt is not None and dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "labeler" | "reviewer"
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuthToken(Base):
    __tablename__ = "auth_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "session" | "api"
    name: Mapped[Optional[str]] = mapped_column(String(128))
    csrf: Mapped[Optional[str]] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)  # every session and token expires


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    instructions: Mapped[str] = mapped_column(Text, default="")
    k: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))  # "ranking" | "pairwise"
    overlap: Mapped[int] = mapped_column(Integer)
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    lease_seconds: Mapped[int] = mapped_column(Integer, default=1800)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # --- a labeler's day (issue 15 item 3, migration 0004): how long a submission may be corrected
    edit_window_seconds: Mapped[int] = mapped_column(Integer, default=600, server_default="600")
    # --- lead tools (0005): qualification, pausing, review (see the block at the end)
    qualify_items: Mapped[int] = mapped_column(Integer, default=0)  # gold items to pass first (0: none)
    qualify_accuracy: Mapped[float] = mapped_column(Float, default=0.0)
    pause_below: Mapped[Optional[float]] = mapped_column(Float)  # rolling gold accuracy floor (None: off)
    pause_window: Mapped[int] = mapped_column(Integer, default=10)  # gold answers in the rolling window
    review_below: Mapped[float] = mapped_column(Float, default=0.6)  # item agreement under this → review queue
    # ---- feedback (issue 15 item 1, migration 0006): schemas.FeedbackSettings as JSON; None: none
    feedback: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)


class Member(Base):
    __tablename__ = "members"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)


class PromptRow(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("project_id", "external_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(255))
    content: Mapped[Any] = mapped_column(JSON)  # str or chat messages
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class CandidateRow(Base):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("project_id", "external_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    prompt_row_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    external_id: Mapped[str] = mapped_column(String(255))
    text: Mapped[str] = mapped_column(Text)
    policy: Mapped[str] = mapped_column(String(255), default="unknown")
    round: Mapped[int] = mapped_column(Integer, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (Index("ix_items_gold", "project_id", "is_gold", "id"),)  # serving gold items (0008)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prompt_row_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    candidate_ids: Mapped[list[Any]] = mapped_column()  # external ids, in display order
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_order: Mapped[Optional[list[Any]]] = mapped_column()  # tie groups, best → worst


class Slot(Base):
    __tablename__ = "slots"
    __table_args__ = (
        UniqueConstraint("item_id", "slot_no"),  # an item's places: two labelers never share one
        UniqueConstraint("item_id", "labeler_id"),  # never the same item twice to one labeler
        Index("ix_slots_claim", "project_id", "status", "id"),
        Index("ix_slots_labeler", "labeler_id", "status", "project_id"),
        Index("ix_slots_lease", "status", "lease_expires"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    slot_no: Mapped[Optional[int]] = mapped_column(Integer)  # None for a gold item's per-labeler slot
    labeler_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(8), default="open")  # open | leased | done
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    leased_at: Mapped[Optional[datetime]] = mapped_column()
    lease_expires: Mapped[Optional[datetime]] = mapped_column()


class RankingRow(Base):
    __tablename__ = "rankings"
    __table_args__ = (
        # a retried submission is recognised within its project; another project's key is unrelated
        UniqueConstraint("project_id", "labeler_id", "idempotency_key", name="uq_rankings_project_labeler_key"),
        Index("ix_rankings_project", "project_id", "item_id"),
        UniqueConstraint("supersedes_id", name="uq_rankings_supersedes_id"),  # (issue 15 item 3)
        Index("ix_rankings_labeler", "labeler_id", "project_id"),  # a labeler's counter and recent list
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # the answered slot; None on a correction (its slot is its ``supersedes`` chain's first row's)
    slot_id: Mapped[Optional[int]] = mapped_column(ForeignKey("slots.id", ondelete="CASCADE"), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    order: Mapped[list[Any]] = mapped_column("ranking", JSON)  # tie groups, best → worst, as given
    all_bad: Mapped[bool] = mapped_column(Boolean, default=False)
    unsafe: Mapped[bool] = mapped_column(Boolean, default=False)
    rationale: Mapped[Optional[str]] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # --- a labeler's day (issue 15 item 3, migration 0004)
    # A correction is a new row naming the one it replaces (rows are never edited); UNIQUE makes the
    # history a chain, so "current" is simply "superseded by no row".
    supersedes_id: Mapped[Optional[int]] = mapped_column(ForeignKey("rankings.id", ondelete="CASCADE", name="fk_rankings_supersedes_id"))
    served_at: Mapped[Optional[datetime]] = mapped_column()  # when the task (or the edit page) was served
    active_seconds: Mapped[Optional[float]] = mapped_column(Float)  # the page's own count of time in view

    # ---- feedback (issue 15 item 1, migration 0006)
    strength: Mapped[Optional[int]] = mapped_column(Integer)  # pairwise degree, 1 … scale // 2; an import keeps its source's (0006)
    strength_scale: Mapped[Optional[int]] = mapped_column(Integer)  # the project's scale when given
    unsafe_ids: Mapped[Optional[list[Any]]] = mapped_column(JSON)  # candidates called unsafe

# ---------------------------------------------------------------- a labeler's day (issue 15 item 3)


class Skip(Base):
    """A labeler passed on a task: the slot went back to the pool (a gold slot was dropped), and the
    item is never offered to them again. Kept for the lead (counts, reasons)."""

    __tablename__ = "skips"
    __table_args__ = (Index("ix_skips_labeler_item", "labeler_id", "item_id"), Index("ix_skips_project", "project_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    slot_id: Mapped[Optional[int]] = mapped_column(Integer)  # no foreign key: a gold slot is deleted on skip
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    reason: Mapped[str] = mapped_column(String(64))
    note: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------- demonstrations (issue 12 item 1)
# A demonstration project's item is one prompt with its model drafts (``Item.candidate_ids``, maybe
# none); its slots are claimed like a ranking item's. What the labeler is writing is autosaved per
# (slot, labeler) in ``DemoDraftRow``, so nobody else's page ever sees it; what they submit is a
# ``DemonstrationRow``, kept as given: a reviewer's edit goes in ``accepted_text`` beside it.


class DemoDraftRow(Base):
    __tablename__ = "demo_drafts"
    __table_args__ = (UniqueConstraint("slot_id", "labeler_id", name="uq_demo_drafts_slot_labeler"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_id: Mapped[int] = mapped_column(ForeignKey("slots.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    edited_from: Mapped[Optional[str]] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DemonstrationRow(Base):
    __tablename__ = "demonstrations"
    __table_args__ = (
        UniqueConstraint("project_id", "labeler_id", "idempotency_key", name="uq_demonstrations_project_labeler_key"),
        Index("ix_demonstrations_project", "project_id", "review", "id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_id: Mapped[int] = mapped_column(ForeignKey("slots.id", ondelete="CASCADE"), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    response: Mapped[str] = mapped_column(Text)  # as the labeler wrote it, never edited
    edited_from: Mapped[Optional[str]] = mapped_column(String(255))  # the draft's candidate id, None: from scratch
    idempotency_key: Mapped[str] = mapped_column(String(128))
    review: Mapped[str] = mapped_column(String(16), default="pending")  # pending | accepted | rejected
    accepted_text: Mapped[Optional[str]] = mapped_column(Text)  # the reviewer's edit, when they made one
    reviewer_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reviewed_at: Mapped[Optional[datetime]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# ---------------------------------------------------------------- lead tools (migration 0005)
# Invite links, adjudicated rankings (review), per-labeler qualification state; the project's
# qualification and review settings are the ``projects`` columns marked "lead tools" above.


class Invite(Base):
    """A one-time, expiring link that lets someone make their own account in a project. Only the
    SHA-256 of the link's secret is stored (as for ``AuthToken``)."""

    __tablename__ = "invites"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))  # "labeler" | "reviewer"
    username: Mapped[Optional[str]] = mapped_column(String(64))  # preset, or chosen by the invitee
    created_by: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[Optional[datetime]] = mapped_column()
    used_by: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class Adjudication(Base):
    """A reviewer's ranking of an item whose labelers disagreed. Append-only: the newest row of an
    item is the one in force; the labelers' raw rankings are never changed."""

    __tablename__ = "adjudications"
    __table_args__ = (Index("ix_adjudications_item", "project_id", "item_id", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    order: Mapped[list[Any]] = mapped_column("ranking", JSON)  # tie groups, best → worst
    note: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabelerState(Base):
    """Where a labeler stands in a project's qualification: ``qualifying`` (served gold only),
    ``qualified``, ``failed`` or ``paused`` (served nothing new). No row: ``qualifying`` when the
    project asks for qualification, else ``qualified``. ``since_ranking_id``: gold answers up to
    this ranking id no longer count (set when the lead un-pauses or restarts qualification)."""

    __tablename__ = "labeler_states"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    since_ranking_id: Mapped[int] = mapped_column(Integer, default=0)
    accuracy: Mapped[Optional[float]] = mapped_column(Float)  # the figure the state was decided on
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    changed_by: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


# ---------------------------------------------------------------- imported judgements (issue 15 item 2)
# Added by migration 0007. An imported judgement is a ``RankingRow`` like a collected one, on a slot
# of its own with ``status = 'imported'``: not open, never leased, no ``slot_no`` and no
# ``labeler_id`` (so it neither fills an item's places nor stops anyone being served the item, and a
# rater's repeat of an item is a second row, not a clash). Its rater is ``RankingRow.labeler_id``:
# an account with ``external = True`` (inactive, no usable password) made by the import. An imported
# strength goes in ``RankingRow.strength`` (added by 0006, the feedback migration; one column for both).

User.external = mapped_column(Boolean, default=False, server_default="0", nullable=False)
RankingRow.import_meta = mapped_column(JSON, nullable=True)  # source file:line, margin, import batch


# ---------------------------------------------------------------- feedback (issue 15 item 1, migration 0006)


class RatingRow(Base):
    """One candidate's rating (``records.Rating``), given with a submission: kept as given."""

    __tablename__ = "ratings"
    __table_args__ = (
        UniqueConstraint("ranking_id", "candidate_id", name="uq_ratings_ranking_candidate"),
        Index("ix_ratings_project", "project_id", "ranking_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ranking_id: Mapped[int] = mapped_column(ForeignKey("rankings.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    candidate_id: Mapped[str] = mapped_column(String(255))
    score: Mapped[Optional[int]] = mapped_column(Integer)
    acceptable: Mapped[Optional[bool]] = mapped_column(Boolean)
    labels: Mapped[list[Any]] = mapped_column(JSON, default=list)
    comment: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
