"""The lead's and the reviewer's pages and API: the review queue and adjudication (reviewers and
admins), labelers' qualification states and the per-labeler dashboard (admins), live project
settings from the project page (admins; the API is ``PATCH /api/projects/{id}``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from rankloop.labeling import plots, stats
from rankloop.labeling.deps import AdminUser, CurrentUser, PathId, SessionDep, status_of
from rankloop.labeling.routes.pages import project_page, render, see_other
from rankloop.labeling.schemas import (AdjudicationIn, AdjudicationOut, LabelerDashboard, LabelerStateIn, LabelerStateOut,
                                       ProjectUpdate, ReviewItem, ReviewQueueEntry)
from rankloop.labeling.services import DomainError, Invalid, parse, projects, qualification, review

router = APIRouter(tags=["review"])
pages = APIRouter(include_in_schema=False)


# ---------------------------------------------------------------- API: review


@router.get("/api/review/projects/{project_id}/queue", response_model=list[ReviewQueueEntry],
            summary="Items whose agreement is below the project's review_below (least agreement first)")
def review_queue(project_id: PathId, user: CurrentUser, db: SessionDep, include_done: bool = False) -> list[ReviewQueueEntry]:
    return review.queue(db, review.reviewable_project(db, project_id, user), include_done)


@router.get("/api/review/projects/{project_id}/items/{item_id}", response_model=ReviewItem,
            summary="An item with every ranking side by side, the consensus and any adjudication")
def review_item(project_id: PathId, item_id: PathId, user: CurrentUser, db: SessionDep) -> ReviewItem:
    return review.item_view(db, review.reviewable_project(db, project_id, user), item_id)


@router.post("/api/review/projects/{project_id}/items/{item_id}", response_model=AdjudicationOut, status_code=201,
             summary="Record the adjudicated ranking of an item (the export prefers it)")
def adjudicate(project_id: PathId, item_id: PathId, body: AdjudicationIn, user: CurrentUser, db: SessionDep) -> AdjudicationOut:
    return review.adjudicate(db, review.reviewable_project(db, project_id, user), item_id, user, body)


# ---------------------------------------------------------------- API: qualification and dashboard (admins)


@router.get("/api/projects/{project_id}/labelers", response_model=list[LabelerStateOut],
            summary="Each member's qualification state: qualifying, qualified, failed or paused")
def labeler_states(project_id: PathId, _: AdminUser, db: SessionDep) -> list[LabelerStateOut]:
    return qualification.list_states(db, projects.get_project(db, project_id))


@router.put("/api/projects/{project_id}/labelers/{user_id}/state", response_model=LabelerStateOut,
            summary="Un-pause (qualified) or restart qualification (qualifying)")
def set_labeler_state(project_id: PathId, user_id: PathId, body: LabelerStateIn, me: AdminUser, db: SessionDep) -> LabelerStateOut:
    return qualification.set_state(db, projects.get_project(db, project_id), user_id, body.state, me.user_id)


def dashboard_rows(db: SessionDep, project_id: int) -> list[LabelerDashboard]:
    p = projects.get_project(db, project_id)
    states = {s.username: s.state for s in qualification.list_states(db, p)}
    return stats.dashboard(db, project_id, states)


@router.get("/api/projects/{project_id}/dashboard", response_model=list[LabelerDashboard],
            summary="Per labeler: agreement with consensus, gold accuracy, median seconds per task, rankings per day")
def dashboard(project_id: PathId, _: AdminUser, db: SessionDep) -> list[LabelerDashboard]:
    return dashboard_rows(db, project_id)


# ---------------------------------------------------------------- pages: review


@pages.get("/review")
def review_home(user: CurrentUser, request: Request, db: SessionDep) -> HTMLResponse:
    ps = review.review_projects(db, user)
    return render(request, "review.html", user, view="projects", projects=ps,
                  queues={p.id: len(review.queue(db, p)) for p in ps})


@pages.get("/review/{project_id}")
def review_project(project_id: PathId, user: CurrentUser, request: Request, db: SessionDep) -> HTMLResponse:
    p = review.reviewable_project(db, project_id, user)
    return render(request, "review.html", user, view="queue", project=p, queue=review.queue(db, p, include_done=True))


def review_item_page(request: Request, user, db: SessionDep, project_id: int, item_id: int, error: str | None = None,
                     notice: str | None = None, status_code: int = 200, places: dict[str, str] | None = None) -> HTMLResponse:
    p = review.reviewable_project(db, project_id, user)
    view = review.item_view(db, p, item_id)
    place_of = {c: str(i + 1) for i, g in enumerate(view.adjudication.order if view.adjudication else view.consensus)
                for c in g}
    if places is not None:
        place_of = places
    # each labeler's place for each candidate: the side-by-side table reads across a row
    ranks = [{c: i + 1 for i, g in enumerate(r.order) for c in g} for r in view.rankings]
    consensus_place = {c: i + 1 for i, g in enumerate(view.consensus) for c in g}
    return render(request, "review.html", user, view="item", project=p, item=view, ranks=ranks, place_of=place_of,
                  consensus_place=consensus_place,
                  csrf=user.csrf, error=error, notice=notice, status_code=status_code)


@pages.get("/review/{project_id}/items/{item_id}")
def review_item_get(project_id: PathId, item_id: PathId, user: CurrentUser, request: Request, db: SessionDep) -> HTMLResponse:
    return review_item_page(request, user, db, project_id, item_id)


@pages.post("/review/{project_id}/items/{item_id}")
async def review_item_post(project_id: PathId, item_id: PathId, user: CurrentUser, request: Request, db: SessionDep) -> Response:
    p = review.reviewable_project(db, project_id, user)
    view = review.item_view(db, p, item_id)
    form = await request.form()
    ids = [c.id for c in view.candidates]
    places = {c: str(form.get(f"place_{c}", ""))[:4] for c in ids}
    note = str(form.get("note", ""))
    try:
        body = parse(AdjudicationIn, order=review.order_from_places(places, ids), note=note or None)
        review.adjudicate(db, p, item_id, user, body)
    except DomainError as e:
        return review_item_page(request, user, db, project_id, item_id, error=str(e), status_code=status_of(e), places=places)
    return review_item_page(request, user, db, project_id, item_id, notice="Adjudicated ranking saved; the export uses it.")


# ---------------------------------------------------------------- pages: the lead's (admins)


@pages.get("/admin/projects/{project_id}/dashboard")
def dashboard_page(project_id: PathId, user: AdminUser, request: Request, db: SessionDep) -> HTMLResponse:
    p = projects.get_project(db, project_id)
    rows = dashboard_rows(db, project_id)
    states = {s.username: s for s in qualification.list_states(db, p)}
    charts = {r.username: {"days": plots.day_bars(r.per_day),
                           "agreement": plots.share_bar(r.agreement_with_consensus, p.review_below),
                           "gold": plots.share_bar(r.gold_accuracy, p.pause_below if p.pause_below is not None
                                                   else (p.qualify_accuracy if p.qualify_items else None))}
              for r in rows}
    return render(request, "dashboard.html", user, project=p, rows=rows, states=states, charts=charts, csrf=user.csrf)


@pages.post("/admin/projects/{project_id}/labelers/{user_id}/state")
def dashboard_set_state(project_id: PathId, user_id: PathId, user: AdminUser, db: SessionDep,
                        state: Annotated[str, Form(max_length=16)]) -> Response:
    body = parse(LabelerStateIn, state=state)
    qualification.set_state(db, projects.get_project(db, project_id), user_id, body.state, user.user_id)
    return see_other(f"/admin/projects/{project_id}/dashboard")


def _number(v: str, what: str, cast=float):
    v = v.strip()
    if not v:
        return None
    try:
        return cast(v)
    except ValueError:
        raise Invalid(f"{what}: not a number ({v[:20]!r})") from None


@pages.post("/admin/projects/{project_id}/settings")
def settings_submit(project_id: PathId, user: AdminUser, request: Request, db: SessionDep,
                    overlap: Annotated[str, Form(max_length=12)] = "", gold_rate: Annotated[str, Form(max_length=24)] = "",
                    instructions: Annotated[str | None, Form()] = None, qualify_items: Annotated[str, Form(max_length=12)] = "",
                    qualify_accuracy: Annotated[str, Form(max_length=24)] = "",
                    pause_below: Annotated[str, Form(max_length=24)] = "",
                    pause_window: Annotated[str, Form(max_length=12)] = "",
                    review_below: Annotated[str, Form(max_length=24)] = "") -> Response:
    projects.get_project(db, project_id)
    try:
        pause = _number(pause_below, "pause below")
        body = parse(ProjectUpdate, overlap=_number(overlap, "overlap", int), gold_rate=_number(gold_rate, "gold rate"),
                     instructions=instructions, qualify_items=_number(qualify_items, "qualify items", int),
                     qualify_accuracy=_number(qualify_accuracy, "qualify accuracy"), pause_below=pause,
                     pause_off=pause is None, pause_window=_number(pause_window, "pause window", int),
                     review_below=_number(review_below, "review below"))
        projects.update_project(db, project_id, body)
    except DomainError as e:
        return project_page(request, user, db, project_id, error=str(e), status_code=status_of(e))
    request.app.state.queue.forget(project_id=project_id)
    return see_other(f"/admin/projects/{project_id}?notice=settings-saved")
