"""A labeler's queue: get the next task, look at one, submit a ranking.

These are the hot routes; they go straight to ``assign.Queue`` (a connection, a few pre-built
statements) rather than through an ORM session. They are ``async``: on SQLite the work (well under
a millisecond, serialised by the write lock anyway) runs inline on the event loop, which saves
FastAPI's several thread-pool hops per request; on PostgreSQL, where the work waits on the
network, it runs in one thread-pool hop."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from rankloop.labeling.assign import Queue
from rankloop.labeling.deps import MAX_ID, CurrentUser, PathId, QueryId
from rankloop.labeling.schemas import EditOut, MyProgressOut, MyRankingOut, SkipIn, SkipOut, SubmitIn, SubmitOut, TaskOut

router = APIRouter(prefix="/api/tasks", tags=["tasks"])


async def get_queue(request: Request) -> Queue:
    return request.app.state.queue


QueueDep = Annotated[Queue, Depends(get_queue)]


async def run(queue: Queue, fn, *args):
    if queue.sqlite:
        return fn(*args)
    return await run_in_threadpool(fn, *args)


@router.post("/next", response_model=TaskOut, responses={204: {"description": "nothing left to label"}},
             summary="The task you hold, or a new one (leased to you until lease_expires)")
async def next_task(user: CurrentUser, queue: QueueDep, project_id: QueryId = None):
    task = await run(queue, queue.next_task, user.user_id, user.is_admin, project_id)
    if task is None:
        return Response(status_code=204)
    return task


@router.get("/progress", response_model=MyProgressOut, summary="Your counter in a project: done today (UTC), done, remaining")
async def my_progress(user: CurrentUser, queue: QueueDep, project_id: Annotated[int, Query(ge=1, le=MAX_ID)]) -> MyProgressOut:
    return await run(queue, queue.my_progress, user.user_id, user.is_admin, project_id)


@router.get("/{task_id}", response_model=TaskOut)
async def get_task(task_id: PathId, user: CurrentUser, queue: QueueDep) -> TaskOut:
    return await run(queue, queue.get_task, task_id, user.user_id, user.is_admin)


@router.post("/{task_id}/submit", response_model=SubmitOut,
             summary="Submit a ranking: a permutation of the shown candidate ids, best first, inner lists tied")
async def submit(task_id: PathId, body: SubmitIn, user: CurrentUser, queue: QueueDep) -> SubmitOut:
    return await run(queue, queue.submit, task_id, user.user_id, body)


@router.post("/{task_id}/skip", response_model=SkipOut,
             summary="Give a held task back with a reason: the slot returns to the pool, never to you again for this item")
async def skip(task_id: PathId, body: SkipIn, user: CurrentUser, queue: QueueDep) -> SkipOut:
    return await run(queue, queue.skip, task_id, user.user_id, body)


# ---------------------------------------------------------------- one's own rankings (issue 15 item 3)
rankings_router = APIRouter(prefix="/api/rankings", tags=["tasks"])


@rankings_router.get("/mine", response_model=list[MyRankingOut], summary="Your recent current rankings, newest first")
async def my_rankings(user: CurrentUser, queue: QueueDep, project_id: QueryId = None,
                      limit: Annotated[int, Query(ge=1, le=200)] = 20) -> list[MyRankingOut]:
    return await run(queue, queue.my_rankings, user.user_id, project_id, limit)


@rankings_router.post("/{ranking_id}/edit", response_model=EditOut,
                      summary="Correct your ranking within the project's edit window (a new row supersedes it)")
async def edit_ranking(ranking_id: PathId, body: SubmitIn, user: CurrentUser, queue: QueueDep) -> EditOut:
    return await run(queue, queue.edit, ranking_id, user.user_id, body)
