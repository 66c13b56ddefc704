"""A labeler's queue: get the next task, look at one, submit a ranking."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from rankloop.labeling import assign
from rankloop.labeling.deps import CurrentUser, SessionDep
from rankloop.labeling.schemas import SubmitIn, SubmitOut, TaskOut

router = APIRouter(prefix="/api/tasks", tags=["tasks"])


@router.post("/next", response_model=TaskOut, responses={204: {"description": "nothing left to label"}},
             summary="The task you hold, or a new one (leased to you until lease_expires)")
def next_task(user: CurrentUser, db: SessionDep, request: Request, project_id: int | None = None):
    task = assign.next_task(db, request.app.state.items, user.user_id, user.is_admin, project_id)
    if task is None:
        return Response(status_code=204)
    return task


@router.get("/{task_id}", response_model=TaskOut)
def get_task(task_id: int, user: CurrentUser, db: SessionDep, request: Request) -> TaskOut:
    return assign.get_task(db, request.app.state.items, task_id, user.user_id, user.is_admin)


@router.post("/{task_id}/submit", response_model=SubmitOut,
             summary="Submit a ranking: a permutation of the shown candidate ids, best first, inner lists tied")
def submit(task_id: int, body: SubmitIn, user: CurrentUser, db: SessionDep, request: Request) -> SubmitOut:
    return assign.submit(db, request.app.state.items, task_id, user.user_id, body)
