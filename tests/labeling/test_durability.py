"""Kill the server with SIGKILL in the middle of a load run, restart it, and check that every
acknowledged ranking is there exactly once (real uvicorn process, real HTTP, SQLite and Postgres)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter

import httpx
import pytest

from labhelp import ADMIN, free_port, make_records, start_server
from rankloop.labeling.client import LabelingClient, LabelingError

pytestmark = pytest.mark.slow


def test_sigkill_during_load_keeps_every_acknowledged_ranking_once(db_url, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    proc = start_server(db_url, port, log)
    try:
        admin = LabelingClient(base)
        admin.login(*ADMIN)
        p = admin.create_project("load", k=3, overlap=2)
        prompts, cands = make_records(300, 3)
        admin.import_candidates(p["id"], prompts, cands)
        names = [f"l{i}" for i in range(8)]
        tokens = {}
        for n in names:
            admin.create_user(n, "labeler-password")
            admin.add_member(p["id"], n)
            tokens[n] = LabelingClient(base).login(n, "labeler-password")

        acked: list[tuple[str, int, int, str]] = []  # (labeler, task, ranking id, key)
        in_flight: list[tuple[str, int, list, str]] = []  # sent, no answer: may or may not be stored
        lock = threading.Lock()
        stop = threading.Event()

        def labeler(name: str) -> None:
            c = LabelingClient(httpx.Client(base_url=base, timeout=10), token=tokens[name])
            while not stop.is_set():
                try:
                    t = c.next_task()
                except (httpx.HTTPError, LabelingError):
                    return
                if t is None:
                    return
                order = [[x["id"]] for x in t["candidates"]]
                key = uuid.uuid4().hex
                try:
                    r = c.submit(t["task_id"], order, idempotency_key=key)
                except (httpx.HTTPError, LabelingError):
                    with lock:
                        in_flight.append((name, t["task_id"], order, key))
                    return
                with lock:
                    acked.append((name, t["task_id"], r["ranking_id"], key))

        threads = [threading.Thread(target=labeler, args=(n,)) for n in names]
        [t.start() for t in threads]
        deadline = time.monotonic() + 30
        while len(acked) < 150 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # mid-run, no warning
        proc.wait(10)
        stop.set()
        [t.join(30) for t in threads]
        assert len(acked) >= 150, f"load did not get going: {len(acked)} acknowledged; see {log}"

        proc = start_server(db_url, port, log)
        admin = LabelingClient(base)
        admin.login(*ADMIN)
        stored = admin.rankings(p["id"])
        by_id = {r["id"]: r for r in stored}
        for name, task_id, rid, _key in acked:  # every acknowledged ranking survived, as acknowledged
            assert rid in by_id, f"acknowledged ranking {rid} (task {task_id}) lost"
            assert by_id[rid]["task_id"] == task_id and by_id[rid]["labeler"] == name
        assert max(Counter(r["task_id"] for r in stored).values()) == 1  # nothing doubled
        assert len(stored) <= len(acked) + len(in_flight)
        # Clients retry what they never heard back about (and what they had acknowledged):
        # each is stored once in total.
        clients = {n: LabelingClient(base, token=tokens[n]) for n in names}
        for name, task_id, order, key in in_flight + [(a, t, None, k) for a, t, _, k in acked[::5]]:
            c = clients[name]
            if order is None:
                order = [[x["id"]] for x in c.task(task_id)["candidates"]]
            assert c.submit(task_id, order, idempotency_key=key)["task_id"] == task_id
        after = admin.rankings(p["id"])
        assert len(after) == len(acked) + len(in_flight)
        assert max(Counter(r["task_id"] for r in after).values()) == 1
        prog = admin.progress(p["id"])
        assert prog["rankings"] == len(after)
    finally:
        proc.kill()
        proc.wait(10)
