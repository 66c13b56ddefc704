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
                       instructions: str = "", lease_seconds: int = 1800, edit_window_seconds: int = 600,
                       feedback: dict | None = None) -> dict:
        body = dict(name=name, k=k, mode=mode, overlap=overlap, gold_rate=gold_rate, instructions=instructions,
                    lease_seconds=lease_seconds, edit_window_seconds=edit_window_seconds)
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

    def import_judgements(self, project_id: int, data: bytes, filename: str = "judgements.jsonl", format: str = "auto",
                          rater_prefix: str = "", default_rater: str = "imported", skip_invalid: bool = False,
                          open_slots: bool = False) -> dict:
        """Import judgements made elsewhere (a JSONL file's bytes; formats in docs/labeling.md):
        the counts, as ``JudgementsImportOut``."""
        params = {"format": format, "rater_prefix": rater_prefix, "default_rater": default_rater,
                  "skip_invalid": str(skip_invalid).lower(), "open_slots": str(open_slots).lower()}
        return self._call("POST", f"/api/projects/{project_id}/import-judgements", params=params,
                          files={"file": (filename, data, "application/x-ndjson")})

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

    def export(self, project_id: int, format: str = "rankings", include_pending: bool = False, **filters: float | bool) -> str:
        """The export as text (JSONL). ``filters``: min_agreement, min_gold_accuracy, include_superseded
        (history of corrections). ``format="demonstrations"``: accepted demonstrations, with
        ``include_pending`` the not yet reviewed ones too (rejected ones never)."""
        params = {"format": format, **{k: v for k, v in filters.items() if v is not None}}
        if include_pending:
            params["include_pending"] = "true"
        return self._call("GET", f"/api/projects/{project_id}/export", params=params) or ""  # an empty export is ""

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

    # ------------------------------------------------------------ a labeler's day (issue 15 item 3)
    def skip(self, task_id: int, reason: str, note: str | None = None) -> dict:
        """Give a held task back (``reason``: a short word, e.g. one of ``schemas.SKIP_REASONS``;
        ``note``: free text). The slot goes back to the pool; this item is not offered to you again."""
        return self._call("POST", f"/api/tasks/{task_id}/skip", json={"reason": reason, "note": note})

    def my_progress(self, project_id: int) -> dict:
        """This labeler's counter in a project: done today (UTC), done, remaining, skipped."""
        return self._call("GET", "/api/tasks/progress", params={"project_id": project_id})

    def my_rankings(self, project_id: int | None = None, limit: int = 20) -> list[dict]:
        """This labeler's recent current rankings, newest first, with ``editable_until``."""
        params: dict[str, Any] = {"limit": limit, **({"project_id": project_id} if project_id is not None else {})}
        return self._call("GET", "/api/rankings/mine", params=params)

    def edit_ranking(self, ranking_id: int, order: list[list[str]] | list[str], idempotency_key: str | None = None,
                     all_bad: bool = False, unsafe: bool = False, rationale: str | None = None, **feedback: Any) -> dict:
        """Correct one of your current rankings within the project's edit window: a new row that
        supersedes it (the old one is kept, marked not current). ``feedback``: ``strength``,
        ``unsafe_ids``, ``ratings``, as for ``submit``, in a project that asks for them."""
        body = {"order": order, "idempotency_key": idempotency_key or uuid.uuid4().hex, "all_bad": all_bad,
                "unsafe": unsafe, "rationale": rationale, **feedback}
        return self._call("POST", f"/api/rankings/{ranking_id}/edit", json=body)

    def change_password(self, current_password: str, new_password: str) -> None:
        """Change your own password; every other session and token of yours is revoked (this one stays)."""
        self._call("POST", "/api/auth/password", json={"current_password": current_password, "new_password": new_password})

    # ------------------------------------------------------------ demonstrations (issue 12 item 1)
    # A project made with ``create_project(name, mode="demonstration", overlap=…)``; its tasks come
    # from ``next_task`` like rankings, with ``kind == "demonstration"``, the ``prompt``, the first
    # model ``draft`` (or None), every draft in ``candidates`` and the caller's autosaved text in
    # ``saved`` (or None).
    def import_prompts(self, project_id: int, prompts: Iterable[Prompt], drafts: Iterable[Candidate] = ()) -> dict:
        """Import prompts for a demonstration project, with optional model drafts (``Candidate``
        records naming their prompt) that a labeler may start from."""
        return self.import_candidates(project_id, prompts, drafts)

    def save_draft(self, task_id: int, text: str, edited_from: str | None = None) -> dict:
        """Autosave what is written so far for a task (only this user ever sees it); renews the lease."""
        return self._call("PUT", f"/api/tasks/{task_id}/draft", json={"text": text, "edited_from": edited_from})

    def submit_demonstration(self, task_id: int, response: str, edited_from: str | None = None,
                             idempotency_key: str | None = None) -> dict:
        """Submit the response written for a demonstration task; ``edited_from`` names the draft
        (candidate id) it was edited from. Retrying with the same ``idempotency_key`` stores it once."""
        body = {"response": response, "edited_from": edited_from, "idempotency_key": idempotency_key or uuid.uuid4().hex}
        return self._call("POST", f"/api/tasks/{task_id}/demonstration", json=body)

    def demonstrations(self, project_id: int, review: str | None = None) -> list[dict]:
        """A project's submitted demonstrations (admins); ``review``: only pending/accepted/rejected."""
        return self._call("GET", f"/api/projects/{project_id}/demonstrations", params={"review": review} if review else None)

    def review_demonstration(self, demo_id: int, verdict: str, text: str | None = None) -> dict:
        """Accept (``text``: an edit kept as the accepted text; the original stays) or reject."""
        return self._call("POST", f"/api/demonstrations/{demo_id}/review", json={"verdict": verdict, "text": text})

    # ------------------------------------------------------------ lead tools: invites, live settings, review,
    # qualification, dashboard
    def update_project(self, project_id: int, **changes: Any) -> dict:
        """Live settings: overlap, gold_rate, instructions, lease_seconds, qualify_items,
        qualify_accuracy, pause_below (``pause_off=True`` turns pausing off), pause_window, review_below."""
        return self._call("PATCH", f"/api/projects/{project_id}", json=changes)

    def create_invite(self, project_id: int, role: str = "labeler", days: float = 7.0, username: str | None = None) -> dict:
        """A one-time link: the answer's ``token`` (and ``path``, ``/invite/<token>``) is shown only here."""
        body: dict[str, Any] = {"role": role, "days": days, **({"username": username} if username else {})}
        return self._call("POST", f"/api/projects/{project_id}/invites", json=body)

    def invites(self, project_id: int) -> list[dict]:
        return self._call("GET", f"/api/projects/{project_id}/invites")

    def revoke_invite(self, project_id: int, invite_id: int) -> None:
        self._call("DELETE", f"/api/projects/{project_id}/invites/{invite_id}")

    def accept_invite(self, token: str, password: str, username: str | None = None) -> dict:
        """Use an invite link's secret: makes the account; later calls carry its token."""
        body: dict[str, Any] = {"password": password, **({"username": username} if username else {})}
        out = self._call("POST", f"/api/invites/{token}/accept", json=body)
        self.token = out["token"]
        return out

    def review_queue(self, project_id: int, include_done: bool = False) -> list[dict]:
        return self._call("GET", f"/api/review/projects/{project_id}/queue", params={"include_done": include_done})

    def review_item(self, project_id: int, item_id: int) -> dict:
        return self._call("GET", f"/api/review/projects/{project_id}/items/{item_id}")

    def adjudicate(self, project_id: int, item_id: int, order: list[list[str]] | list[str], note: str | None = None) -> dict:
        return self._call("POST", f"/api/review/projects/{project_id}/items/{item_id}", json={"order": order, "note": note})

    def labeler_states(self, project_id: int) -> list[dict]:
        return self._call("GET", f"/api/projects/{project_id}/labelers")

    def set_labeler_state(self, project_id: int, user_id: int, state: str) -> dict:
        """``qualified`` (un-pause) or ``qualifying`` (start qualification over)."""
        return self._call("PUT", f"/api/projects/{project_id}/labelers/{user_id}/state", json={"state": state})

    def dashboard(self, project_id: int) -> list[dict]:
        return self._call("GET", f"/api/projects/{project_id}/dashboard")

    # ------------------------------------------------------------ feedback (issue 15 item 1)
    def ratings(self, project_id: int) -> list[dict]:
        """Every per-candidate rating of the project, as given."""
        return self._call("GET", f"/api/projects/{project_id}/ratings")

    def set_feedback(self, project_id: int, **settings: Any) -> dict:
        """Set the project's feedback settings (``schemas.FeedbackSettings``: strength_scale,
        acceptability, likert, labels, comments)."""
        return self._call("PATCH", f"/api/projects/{project_id}", json={"feedback": settings})
