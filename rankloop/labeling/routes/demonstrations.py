"""Demonstration tasks over the REST API: autosave and submit (the labeler holding the task),
list and review (admins). Getting a task is the queue's ``POST /api/tasks/next`` as for rankings;
the export is ``GET /api/projects/{id}/export?format=demonstrations`` (``routes/projects``)."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter

from rankloop.labeling.deps import AdminUser, CurrentUser, PathId, SessionDep
from rankloop.labeling.schemas import DemonstrationIn, DemonstrationOut, DemonstrationSubmitOut, DraftIn, DraftOut, Review, ReviewIn
from rankloop.labeling.services import demonstrations, projects

router = APIRouter(tags=["demonstrations"])


@router.put("/api/tasks/{task_id}/draft", response_model=DraftOut,
            summary="Autosave the response you are writing for a demonstration task (only you ever see it)")
def save_draft(task_id: PathId, body: DraftIn, user: CurrentUser, db: SessionDep) -> DraftOut:
    return demonstrations.save_draft(db, task_id, user.user_id, body)


@router.post("/api/tasks/{task_id}/demonstration", response_model=DemonstrationSubmitOut,
             summary="Submit the response you wrote for a demonstration task")
def submit(task_id: PathId, body: DemonstrationIn, user: CurrentUser, db: SessionDep) -> DemonstrationSubmitOut:
    return demonstrations.submit(db, task_id, user.user_id, body)


@router.get("/api/projects/{project_id}/demonstrations", response_model=list[DemonstrationOut],
            summary="A demonstration project's submitted demonstrations (review: only those in that state)")
def list_demonstrations(project_id: PathId, _: AdminUser, db: SessionDep,
                        review: Optional[Review] = None) -> list[DemonstrationOut]:
    projects.get_project(db, project_id)
    return demonstrations.list_demonstrations(db, project_id, review)


@router.post("/api/demonstrations/{demo_id}/review", response_model=DemonstrationOut,
             summary="Accept (optionally with an edit) or reject a demonstration")
def review(demo_id: PathId, body: ReviewIn, user: AdminUser, db: SessionDep) -> DemonstrationOut:
    return demonstrations.review(db, demo_id, user.user_id, body)
