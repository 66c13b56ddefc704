"""Invite links (issue 15 item 4): an admin makes a one-time, expiring link for a project and a
role; whoever opens it chooses a username (unless preset) and their own password, is logged in and
made a member. Nobody ever types someone else's password.

The link's secret is 32 random bytes; only its SHA-256 is stored (as for ``AuthToken``), found by
an indexed lookup and compared again in constant time. Using a link is one conditional
``UPDATE … WHERE used_at IS NULL`` in the transaction that makes the account: two people opening
the same link at once get one account between them, the other a clear refusal.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rankloop.labeling.db import writing
from rankloop.labeling.models import Invite, Member, Project, User, as_utc
from rankloop.labeling.schemas import InviteCreate, InviteCreated, InviteOut
from rankloop.labeling.security import hash_password, new_token, same, token_hash
from rankloop.labeling.services import users
from rankloop.labeling.services.errors import Conflict, Invalid, NotFound, brief


class InviteUnusable(NotFound):
    """The link is unknown, used or expired (shown as its own page, status 410)."""


def _status(inv: Invite, now: datetime) -> str:
    if inv.used_at is not None:
        return "used"
    return "expired" if as_utc(inv.expires_at) <= now else "open"


def _out(db: Session, inv: Invite, now: datetime) -> InviteOut:
    used_by = db.get(User, inv.used_by).username if inv.used_by else None
    return InviteOut(id=inv.id, project_id=inv.project_id, role=inv.role, username=inv.username,
                     created_at=as_utc(inv.created_at), expires_at=as_utc(inv.expires_at), used_at=as_utc(inv.used_at),
                     used_by=used_by, status=_status(inv, now))


def create_invite(db: Session, project: Project, new: InviteCreate, created_by: int | None) -> InviteCreated:
    """A new link; its secret is in the answer only."""
    if new.username is not None and users.find_user(db, new.username) is not None:
        raise Conflict(f"user {brief(new.username)} already exists: add them to the project instead")
    raw, now = new_token(), datetime.now(timezone.utc)
    inv = Invite(token_hash=token_hash(raw), project_id=project.id, role=new.role, username=new.username,
                 created_by=created_by, created_at=now, expires_at=now + timedelta(days=new.days))
    with writing(db):
        db.add(inv)
    return InviteCreated(**_out(db, inv, now).model_dump(), token=raw, path=f"/invite/{raw}")


def list_invites(db: Session, project_id: int) -> list[InviteOut]:
    now = datetime.now(timezone.utc)
    rows = db.execute(select(Invite).where(Invite.project_id == project_id).order_by(Invite.id.desc())).scalars()
    return [_out(db, i, now) for i in rows]


def revoke_invite(db: Session, project_id: int, invite_id: int) -> None:
    """An unused link stops working now (it is marked expired; used ones are kept as a record)."""
    with writing(db):
        inv = db.get(Invite, invite_id)
        if inv is None or inv.project_id != project_id:
            raise NotFound(f"invite {invite_id} not found in project {project_id}")
        if inv.used_at is None:
            inv.expires_at = datetime.now(timezone.utc)


def find_open(db: Session, raw: str) -> Invite:
    """The usable invite behind a link's secret, or ``InviteUnusable`` saying why not."""
    h = token_hash(raw or "")
    inv = db.execute(select(Invite).where(Invite.token_hash == h)).scalar_one_or_none()
    if inv is None or not same(inv.token_hash, h):
        raise InviteUnusable("This invite link is not valid. Ask your project lead for a new one.")
    status = _status(inv, datetime.now(timezone.utc))
    if status == "used":
        raise InviteUnusable("This invite link was already used; each link makes one account. "
                             "Log in, or ask your project lead for a new link.")
    if status == "expired":
        raise InviteUnusable("This invite link has expired. Ask your project lead for a new one.")
    return inv


def accept(db: Session, raw: str, username: str | None, password: str) -> User:
    """Use the link: make the account (the invite's role), the membership, mark the link used."""
    inv = find_open(db, raw)
    name = inv.username or username
    if not name:
        raise Invalid("choose a username")
    if inv.username is not None and username not in (None, "", inv.username):
        raise Invalid(f"this invite is for the username {brief(inv.username)}")
    user = User(username=name, password_hash=hash_password(password), role=inv.role, active=True)
    try:
        with writing(db):
            now = datetime.now(timezone.utc)
            won = db.execute(update(Invite).where(Invite.id == inv.id, Invite.used_at.is_(None), Invite.expires_at > now)
                             .values(used_at=now).execution_options(synchronize_session=False)).rowcount
            if won != 1:
                raise InviteUnusable("This invite link was just used or has expired. Ask your project lead for a new one.")
            db.add(user)
            db.flush()
            db.execute(update(Invite).where(Invite.id == inv.id).values(used_by=user.id)
                       .execution_options(synchronize_session=False))
            db.add(Member(project_id=inv.project_id, user_id=user.id))
    except IntegrityError:
        raise Conflict(f"the username {brief(name)} is taken: choose another") from None
    return user
