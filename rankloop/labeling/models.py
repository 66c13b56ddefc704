"""The labeling database (SQLAlchemy 2 typed ORM). The schema itself is owned by the Alembic
migrations in ``migrations/versions``; these classes must match them (a test checks).

    User ─┬─ AuthToken (browser sessions and API tokens, stored as SHA-256 of the secret)
          └─ Member ── Project ── PromptRow ── CandidateRow
                          └────── Item (one prompt's K candidates, or a pair) ── Slot ── RankingRow

A ``Slot`` is one of an item's ``overlap`` places (created at import) or a gold item's place for one
labeler (created when served). Claiming a slot is the assignment; ``RankingRow`` is what the
labeler gave, kept as given and never edited.
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
    role: Mapped[str] = mapped_column(String(16))  # "admin" | "labeler"
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
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_id: Mapped[int] = mapped_column(ForeignKey("slots.id", ondelete="CASCADE"), unique=True)
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
    # ---- feedback (issue 15 item 1, migration 0006)
    strength: Mapped[Optional[int]] = mapped_column(Integer)  # pairwise degree, 1 … scale // 2
    strength_scale: Mapped[Optional[int]] = mapped_column(Integer)  # the project's scale when given
    unsafe_ids: Mapped[Optional[list[Any]]] = mapped_column(JSON)  # candidates called unsafe


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
