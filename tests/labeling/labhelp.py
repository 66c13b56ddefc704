"""Helpers shared by the labeling tests (imported by name: this folder is on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

ADMIN = ("admin", "admin-password")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PG_URL = os.environ.get("RANKLOOP_TEST_POSTGRES_URL")
PG_SKIP = "RANKLOOP_TEST_POSTGRES_URL is unset: no PostgreSQL to test against (.ci/run starts one)"


def labeler(tc, admin, name: str, project_id: int | None = None, password: str = "labeler-password"):
    """A labeler account (a project member if ``project_id``), logged in through the API."""
    from rankloop.labeling.client import LabelingClient

    admin.create_user(name, password)
    if project_id is not None:
        admin.add_member(project_id, name)
    c = LabelingClient(tc)
    c.login(name, password)
    return c


def make_records(n_prompts: int, k: int, prefix: str = "p"):
    from rankloop.records import Candidate, Prompt

    prompts = [Prompt(id=f"{prefix}{i}", text=f"Prompt number {i}") for i in range(n_prompts)]
    cands = [Candidate(id=f"{prefix}{i}-c{j}", prompt_id=f"{prefix}{i}", text=f"answer {j} to prompt {i}", policy="test")
             for i in range(n_prompts) for j in range(k)]
    return prompts, cands


def best_first(task: dict) -> list[list[str]]:
    """A deterministic ranking of a task: candidate ids sorted (c0 best)."""
    return [[c] for c in sorted(c["id"] for c in task["candidates"])]
