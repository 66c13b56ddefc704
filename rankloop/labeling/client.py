"""``LabelingClient``: the REST API from Python, for scripts and for simulated labelers.

Against a running server::

    c = LabelingClient("http://127.0.0.1:8000")
    c.login("admin", "secret")

In process, against an app (no network)::

    from fastapi.testclient import TestClient
    c = LabelingClient(TestClient(create_app("sqlite:///labels.db")))

Every call raises ``LabelingError`` (with the server's explanation) on a non-2xx answer.
"""

from __future__ import annotations

import uuid
from typing import Any, Iterable

import httpx

from rankloop.records import Candidate, Prompt


class LabelingError(RuntimeError):
    def __init__(self, status: int, detail: Any):
        self.status, self.detail = status, detail
        super().__init__(f"HTTP {status}: {detail}")


class LabelingClient:
    def __init__(self, base: Any, token: str | None = None, timeout: float = 30.0):
        """``base``: a URL, or any client with httpx's ``request(method, url, ...)`` (an
        ``httpx.Client`` with ``base_url``, or FastAPI's ``TestClient``)."""
        self.http = httpx.Client(base_url=base.rstrip("/"), timeout=timeout) if isinstance(base, str) else base
        self.token = token

    # ------------------------------------------------------------ plumbing
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        r = self.http.request(method, path, headers=headers, **kw)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise LabelingError(r.status_code, detail)
        if r.status_code == 204 or not r.content:
            return None
        if r.headers.get("content-type", "").startswith("application/json"):
            return r.json()
        return r.text

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "LabelingClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------ auth and users
    def login(self, username: str, password: str) -> str:
        """Log in; later calls carry the token. Returns it."""
        self.token = self._call("POST", "/api/auth/login", json={"username": username, "password": password})["token"]
        return self.token

    def api_token(self, name: str = "script", days: float | None = None) -> str:
        """A token for scripts, valid ``days`` (default: the server's, 90); does not replace the one
        in use."""
        body: dict[str, Any] = {"name": name, **({"days": days} if days is not None else {})}
        return self._call("POST", "/api/auth/tokens", json=body)["token"]

    def tokens(self) -> list[dict]:
        """This user's sessions and tokens (ids, names, expiry; never the secrets)."""
        return self._call("GET", "/api/auth/tokens")

    def revoke_token(self, token_id: int) -> None:
        self._call("DELETE", f"/api/auth/tokens/{token_id}")

    def revoke_all_tokens(self) -> None:
        """Revoke every session and token of this user, the one in use included."""
        self._call("DELETE", "/api/auth/tokens")
        self.token = None

    def me(self) -> dict:
        return self._call("GET", "/api/auth/me")

    def create_user(self, username: str, password: str, role: str = "labeler") -> dict:
        return self._call("POST", "/api/users", json={"username": username, "password": password, "role": role})

    # ------------------------------------------------------------ projects
    def create_project(self, name: str, k: int = 4, mode: str = "ranking", overlap: int = 1, gold_rate: float = 0.0,
                       instructions: str = "", lease_seconds: int = 1800, feedback: dict | None = None) -> dict:
        body = dict(name=name, k=k, mode=mode, overlap=overlap, gold_rate=gold_rate, instructions=instructions,
                    lease_seconds=lease_seconds)
        if feedback is not None:  # schemas.FeedbackSettings (issue 15 item 1)
            body["feedback"] = feedback
        return self._call("POST", "/api/projects", json=body)

    def projects(self) -> list[dict]:
        return self._call("GET", "/api/projects")

    def import_candidates(self, project_id: int, prompts: Iterable[Prompt], candidates: Iterable[Candidate],
                          gold: dict[str, list] | None = None) -> dict:
        """Import ``Prompt``/``Candidate`` records; ``gold`` maps prompt id → known ranking."""
        body = {
            "prompts": [p.model_dump(mode="json") for p in prompts],
            "candidates": [c.model_dump(mode="json") for c in candidates],
            "gold": [{"prompt_id": k, "order": v} for k, v in (gold or {}).items()],
        }
        return self._call("POST", f"/api/projects/{project_id}/import", json=body)

    def add_member(self, project_id: int, username: str) -> dict:
        return self._call("POST", f"/api/projects/{project_id}/members", json={"username": username})

    invite = add_member

    def progress(self, project_id: int) -> dict:
        return self._call("GET", f"/api/projects/{project_id}/progress")

    def agreement(self, project_id: int) -> dict:
        return self._call("GET", f"/api/projects/{project_id}/agreement")

    def consensus(self, project_id: int) -> list[dict]:
        return self._call("GET", f"/api/projects/{project_id}/consensus")

    def rankings(self, project_id: int) -> list[dict]:
        return self._call("GET", f"/api/projects/{project_id}/rankings")

    def export(self, project_id: int, format: str = "rankings", **filters: float) -> str:
        params = {"format": format, **{k: v for k, v in filters.items() if v is not None}}
        return self._call("GET", f"/api/projects/{project_id}/export", params=params)

    # ------------------------------------------------------------ labeling
    def next_task(self, project_id: int | None = None) -> dict | None:
        """The task this user holds or a newly leased one; None when nothing is left."""
        params = {"project_id": project_id} if project_id is not None else None
        return self._call("POST", "/api/tasks/next", params=params)

    def task(self, task_id: int) -> dict:
        return self._call("GET", f"/api/tasks/{task_id}")

    def submit(self, task_id: int, order: list[list[str]] | list[str], idempotency_key: str | None = None,
               all_bad: bool = False, unsafe: bool = False, rationale: str | None = None,
               strength: int | None = None, unsafe_ids: list[str] | None = None,
               ratings: list[dict] | None = None) -> dict:
        """Submit a ranking (best → worst; inner lists are ties). Retrying with the same
        ``idempotency_key`` stores it once. ``strength``, ``unsafe_ids`` and ``ratings``
        (``[{"candidate_id", "score", "acceptable", "labels", "comment"}]``) as the project's
        feedback settings allow (docs/labeling.md, "Richer feedback")."""
        body = {"order": order, "idempotency_key": idempotency_key or uuid.uuid4().hex, "all_bad": all_bad,
                "unsafe": unsafe, "rationale": rationale}
        if strength is not None:
            body["strength"] = strength
        if unsafe_ids:
            body["unsafe_ids"] = list(unsafe_ids)
        if ratings:
            body["ratings"] = list(ratings)
        return self._call("POST", f"/api/tasks/{task_id}/submit", json=body)


    # ------------------------------------------------------------ feedback (issue 15 item 1)
    def ratings(self, project_id: int) -> list[dict]:
        """Every per-candidate rating of the project, as given."""
        return self._call("GET", f"/api/projects/{project_id}/ratings")

    def set_feedback(self, project_id: int, **settings: Any) -> dict:
        """Set the project's feedback settings (``schemas.FeedbackSettings``: strength_scale,
        acceptability, likert, labels, comments)."""
        return self._call("PATCH", f"/api/projects/{project_id}", json={"feedback": settings})
