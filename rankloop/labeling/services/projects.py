"""Projects and their members."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rankloop.labeling.db import refresh_claim_statistics, writing
from rankloop.labeling.models import Item, Member, Project, Slot, User
from rankloop.labeling.schemas import ProjectCreate, ProjectUpdate, UserCreate
from rankloop.labeling.services import users
from rankloop.labeling.services.errors import Conflict, Invalid, NotFound, brief, listing, parse


def get_project(db: Session, project_id: int) -> Project:
    p = db.get(Project, project_id)
    if p is None:
        raise NotFound(f"project {project_id} not found")
    return p


def find_project(db: Session, ref: int | str) -> Project:
    """A project by id (all digits) or by name."""
    q = select(Project).where(Project.id == int(ref)) if str(ref).isdigit() else select(Project).where(Project.name == str(ref))
    p = db.execute(q).scalar_one_or_none()
    if p is None:
        names = list(db.execute(select(Project.name).order_by(Project.id)).scalars())
        raise NotFound(f"no project {brief(ref)} (projects: {listing(names) or 'none'})")
    return p


def list_projects(db: Session, member_id: int | None = None) -> list[Project]:
    """Every project, or only those ``member_id`` belongs to."""
    q = select(Project).order_by(Project.id)
    if member_id is not None:
        q = q.join(Member, Member.project_id == Project.id).where(Member.user_id == member_id)
    return list(db.execute(q).scalars())


def visible_project(db: Session, project_id: int, user_id: int, is_admin: bool) -> Project:
    """The project, if the user may see it (admins: any; labelers: their own). Others' projects
    are reported as missing, not forbidden, so ids do not leak."""
    p = get_project(db, project_id)
    if not is_admin and db.get(Member, (project_id, user_id)) is None:
        raise NotFound(f"project {project_id} not found")
    return p


def _check_feedback(mode: str, fb: dict | None) -> None:
    if fb and fb.get("strength_scale") is not None and mode != "pairwise":
        raise Invalid("feedback.strength_scale: a preference strength is for pairwise projects "
                      f"(this one ranks {mode!r})")


def create_project(db: Session, new: ProjectCreate) -> Project:
    data = new.model_dump()
    if data["mode"] == "pairwise":
        data["k"] = 2
    elif data["mode"] == "demonstration":
        data["k"] = 0  # nothing is ranked; a prompt has any number of drafts
    _check_feedback(data["mode"], data["feedback"])
    p = Project(**data)
    try:
        with writing(db):
            db.add(p)
    except IntegrityError:
        raise Conflict(f"a project named {brief(new.name)} already exists") from None
    return p


def update_project(db: Session, project_id: int, change: ProjectUpdate) -> Project:
    """Change settings of a live project. A new ``overlap`` re-plans the slots (``replan_slots``) in
    the same transaction, under a lock on the project row (PostgreSQL: two admins changing it at
    once queue; SQLite's writers are serialised already)."""
    data = change.model_dump(exclude_none=True)
    pause_off = data.pop("pause_off", False)
    with writing(db):
        p = db.get(Project, project_id, with_for_update=True)
        if p is None:
            raise NotFound(f"project {project_id} not found")
        _check_feedback(p.mode, data.get("feedback"))
        overlap = data.pop("overlap", None)
        for k, v in data.items():
            setattr(p, k, v)
        if pause_off:
            p.pause_below = None
        if overlap is not None and overlap != p.overlap:
            replan_slots(db, p, overlap)
            p.overlap = overlap
    return p


# ---------------------------------------------------------------- lead tools: live overlap


def replan_slots(db: Session, project: Project, overlap: int) -> dict[str, int]:
    """Give every non-gold item ``overlap`` slots, inside the caller's transaction.

    Raising: each item gets the missing slots (numbered after its highest). Lowering: each item
    keeps at least ``overlap`` slots and every done or leased one; the open slots beyond that go,
    highest numbers first. The delete is conditional (``status = 'open'``): a slot claimed while
    this runs stays (PostgreSQL: the claim's row lock makes the delete re-check it), so an item
    may keep one more slot than asked, never lose an answer or a held task."""
    rows = db.execute(select(Slot.item_id, Slot.id, Slot.slot_no, Slot.status)
                      .where(Slot.project_id == project.id, Slot.slot_no.is_not(None))).all()
    items = db.execute(select(Item.id).where(Item.project_id == project.id, Item.is_gold.is_(False))).scalars().all()
    per_item: dict[int, list] = {i: [] for i in items}
    for r in rows:
        per_item.setdefault(r.item_id, []).append(r)
    new, gone = [], []
    for item_id, slots in per_item.items():
        if len(slots) < overlap:
            top = max((s.slot_no for s in slots), default=-1)
            new += [{"project_id": project.id, "item_id": item_id, "slot_no": top + 1 + j, "status": "open", "is_gold": False}
                    for j in range(overlap - len(slots))]
        elif len(slots) > overlap:
            spare = sorted((s for s in slots if s.status == "open"), key=lambda s: -s.slot_no)
            gone += [s.id for s in spare[: len(slots) - overlap]]
    for i in range(0, len(new), 5000):
        db.execute(insert(Slot), new[i:i + 5000])
    if new:
        refresh_claim_statistics(db)
    retired = 0
    for i in range(0, len(gone), 5000):
        retired += db.execute(delete(Slot).where(Slot.id.in_(gone[i:i + 5000]), Slot.status == "open")
                              .execution_options(synchronize_session=False)).rowcount
    return {"created": len(new), "retired": retired}


def list_members(db: Session, project_id: int) -> list[User]:
    get_project(db, project_id)
    return list(db.execute(select(User).join(Member, Member.user_id == User.id).where(Member.project_id == project_id)
                           .order_by(User.username)).scalars())


def add_member(db: Session, project_id: int, username: str) -> User:
    user = users.find_user(db, username)
    if user is None:
        raise NotFound(f"no user {brief(username)}: create the account first")
    with writing(db):
        if db.get(Member, (project_id, user.id)) is None:
            db.add(Member(project_id=project_id, user_id=user.id))
    return user


def invite(db: Session, project_id: int, username: str, password: str | None) -> User:
    """Make ``username`` a member, creating a labeler account (with ``password``) if there is none."""
    get_project(db, project_id)
    if users.find_user(db, username) is None:
        if not password:
            raise Invalid(f"{brief(username)} has no account yet: give an initial password")
        users.create_user(db, parse(UserCreate, username=username, password=password, role="labeler"))
    return add_member(db, project_id, username)


def remove_member(db: Session, project_id: int, user_id: int) -> None:
    """End a membership. The tasks the user holds in the project go back to the queue now (not
    when their lease runs out), so a late answer to one is refused."""
    get_project(db, project_id)
    with writing(db):
        gone = db.execute(delete(Member).where(Member.project_id == project_id, Member.user_id == user_id)).rowcount
        if not gone:
            raise NotFound(f"user {user_id} is not a member of project {project_id}")
        held = (Slot.project_id == project_id, Slot.labeler_id == user_id, Slot.status == "leased")
        db.execute(update(Slot).where(*held, Slot.slot_no.is_not(None))
                   .values(status="open", labeler_id=None, leased_at=None, lease_expires=None))
        db.execute(delete(Slot).where(*held, Slot.slot_no.is_(None)))  # a gold item's slot is made per labeler
