"""Load benchmark of the labeling app: N concurrent simulated labelers over real HTTP.

A real uvicorn server process serves the app on loopback (SQLite file in WAL mode; PostgreSQL when
a URL is given or $RANKLOOP_TEST_POSTGRES_URL is set). Each simulated labeler holds one keep-alive
connection and loops: POST /api/tasks/next, then POST /api/tasks/{id}/submit with a ranking, until
the fixed number of submissions is reached. A share of submissions is sent twice with the same
idempotency key (a double click) to exercise deduplication. A labeler's day is in the path too
(issue 15): a share of tasks is skipped (the slot goes back to the pool), a share of submissions is
corrected at once (a new row that supersedes it), and the project is gated — gold items served at
the gold rate, each gold answer re-deciding the labeler's qualification state, every claim reading
it (the bench's labelers answer gold items right, so none is paused).

Each labeler's first cycle is a warm-up (all of them start in the same instant, so their first
requests queue behind each other); submissions per second and latencies are measured from the
moment every labeler has finished it to the moment the last submission is handed out (after it,
labelers leave one by one: a tail at falling load, most of all with a think time). Reports
submissions per second, p50/p99 latency of both requests, and checks the database afterwards
through the API: ``lost`` (acknowledged but not stored) and ``duplicates`` (stored more than once,
or stored without an acknowledgement) must both be 0.

    python bench/labeling_load.py                       # 50 labelers, 3000 submissions, SQLite (+ Postgres if set)
    python bench/labeling_load.py --postgres-url postgresql://postgres@127.0.0.1:5432/bench

The client is a minimal HTTP/1.1 client on asyncio streams (one connection per labeler), so the
load generator spends little CPU; it still shares the machine with the server, as does anything
else running on it (reported as the load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN = ("bench-admin", "bench-admin-password")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str, port: int, workers: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RANKLOOP_DATABASE_URL": url, "RANKLOOP_ADMIN_USER": ADMIN[0], "RANKLOOP_ADMIN_PASSWORD": ADMIN[1],
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "rankloop.labeling.app:app_from_env", "--host", "127.0.0.1",
           "--port", str(port), "--no-access-log", "--log-level", "warning", "--workers", str(workers)]
    if workers == 1:
        cmd[cmd.index("--workers"):cmd.index("--workers") + 2] = []
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop_server(proc)  # (a supervisor left behind would restart failing workers for ever, loading the machine)
    raise SystemExit(f"server did not start; see {log}")


def _cpu_seconds(match, children: bool = False) -> float:
    """user+system CPU seconds of every live process for which ``match(command name, pgrp)`` holds
    (``children``: plus that of its exited, waited-for children)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        fields = rest.split()
        if match(head.split("(", 1)[1], int(fields[2])):  # field 5 (pgrp) counted from after the command name
            total += (int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)) / tick
    return total


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds of every process in the server's process group (uvicorn workers too)."""
    return _cpu_seconds(lambda comm, pgrp: pgrp == pgid)


def postgres_cpu_seconds() -> float:
    """CPU seconds of the PostgreSQL server's processes: its live backends (one per pooled connection)
    and, through the postmaster's children's times, those that have exited."""
    return _cpu_seconds(lambda comm, pgrp: comm == "postgres", children=True)


def stop_server(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


class Conn:
    """One keep-alive HTTP/1.1 connection: just enough HTTP for this API (JSON, Content-Length)."""

    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, body: dict | None = None) -> tuple[int, dict | None]:
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
        self.w.write(head + data)
        await self.w.drain()
        status_line = await self.r.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            if k.lower() == "content-length":
                length = int(v)
        payload = await self.r.readexactly(length) if length else b""
        return status, (json.loads(payload) if payload else None)


async def run_load(port: int, tokens: dict[str, str], project_id: int, total: int, double_rate: float, seed: int,
                   skip_rate: float = 0.0, edit_rate: float = 0.0, gold: dict[str, list] | None = None,
                   think_s: float = 0.0):
    rng = random.Random(seed)
    gold = gold or {}
    acked: dict[int, int] = {}  # ranking id -> task id
    edited: dict[int, int] = {}  # correction's ranking id -> the ranking it supersedes
    lat_next: list[tuple[float, float]] = []  # (start, seconds)
    lat_submit: list[tuple[float, float]] = []
    done_at: list[float] = []  # when each (non-warm-up) submission was acknowledged
    counts = {"issued": 0, "double_clicks": 0, "double_dup_ok": 0, "errors": 0, "empty": 0, "warm": 0, "measured": 0,
              "skips": 0, "edits": 0, "gold_answered": 0}
    window = {"start": None, "end": None}
    n_labelers = len(tokens)

    async def labeler(name: str) -> None:
        c = Conn(port, tokens[name])
        await c.open()
        first = True
        while counts["issued"] < total:
            counts["issued"] += 1
            if counts["issued"] == total and window["end"] is None:  # from now on labelers leave: the load falls
                window["end"] = time.perf_counter()
            t0 = time.perf_counter()
            st, task = await c.post(f"/api/tasks/next?project_id={project_id}")
            if not first:
                lat_next.append((t0, time.perf_counter() - t0))
            if st == 204:
                counts["empty"] += 1
                counts["issued"] -= 1
                return
            if st != 200:
                counts["errors"] += 1
                continue
            if not first and task["prompt_id"] not in gold and rng.random() < skip_rate:
                st, _ = await c.post(f"/api/tasks/{task['task_id']}/skip", {"reason": "unclear"})
                counts["issued"] -= 1
                if st == 200:
                    counts["skips"] += 1
                else:
                    counts["errors"] += 1
                continue
            if think_s > 0:  # reading and ranking: exponential think time (an open-ish load, not a closed loop)
                await asyncio.sleep(rng.expovariate(1 / think_s))
            ids = [x["id"] for x in task["candidates"]]
            rng.shuffle(ids)
            if task["prompt_id"] in gold:  # a gold item, answered right
                counts["gold_answered"] += 1
                order = gold[task["prompt_id"]]
            else:
                order = [[i] for i in ids]
            body = {"order": order, "idempotency_key": uuid.uuid4().hex}
            t0 = time.perf_counter()
            st, out = await c.post(f"/api/tasks/{task['task_id']}/submit", body)
            if not first:
                lat_submit.append((t0, time.perf_counter() - t0))
            if st != 200 or out["duplicate"]:
                counts["errors"] += 1
                continue
            acked[out["ranking_id"]] = task["task_id"]
            if first:  # warm-up: all labelers start at once; the steady state is measured after it
                first = False
                counts["warm"] += 1
                if counts["warm"] == n_labelers:
                    window["start"] = time.perf_counter()
            else:
                done_at.append(time.perf_counter())
            if rng.random() < double_rate:
                counts["double_clicks"] += 1
                st, out2 = await c.post(f"/api/tasks/{task['task_id']}/submit", body)
                if st == 200 and out2["duplicate"] and out2["ranking_id"] == out["ranking_id"]:
                    counts["double_dup_ok"] += 1
            if task["prompt_id"] not in gold and rng.random() < edit_rate:  # a correction, within the window
                fix = {"order": list(reversed(body["order"])), "idempotency_key": uuid.uuid4().hex}
                st, e = await c.post(f"/api/rankings/{out['ranking_id']}/edit", fix)
                if st == 200 and not e["duplicate"]:
                    counts["edits"] += 1
                    edited[e["ranking_id"]] = out["ranking_id"]
                else:
                    counts["errors"] += 1
        c.w.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(labeler(n) for n in tokens))
    end = time.perf_counter()
    counts["total_seconds"] = end - t0
    # the steady state: from the end of the warm-up to the moment the last submission was handed out
    # (after it the labelers leave one by one, each after their think time: a tail at falling load)
    start, stop = window["start"] or t0, window["end"] or end
    elapsed = stop - start
    counts["measured"] = sum(1 for t in done_at if start <= t <= stop)
    inside = lambda xs: [x for t, x in xs if start <= t <= stop]  # noqa: E731
    return acked, edited, inside(lat_next), inside(lat_submit), counts, elapsed


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] * 1000


def bench_one(backend: str, url: str, labelers: int, total: int, k: int, overlap: int, workers: int, double_rate: float,
              log: Path, skip_rate: float = 0.0, edit_rate: float = 0.0, gold_rate: float = 0.0,
              think_ms: float = 0.0) -> dict:
    from rankloop.labeling.client import LabelingClient
    from rankloop.records import Candidate, Prompt

    port = free_port()
    proc = start_server(url, port, workers, log)
    try:
        base = f"http://127.0.0.1:{port}"
        admin = LabelingClient(base, timeout=120)
        admin.login(*ADMIN)
        p = admin.create_project(f"bench-{uuid.uuid4().hex[:6]}", k=k, overlap=overlap)
        n_items = total  # twice the slots needed at overlap 2: nobody runs dry near the end
        prompts = [Prompt(id=f"q{i}", text=f"Write a short story about the number {i}.") for i in range(n_items)]
        cands = [Candidate(id=f"q{i}-{j}", prompt_id=f"q{i}", text=f"Story {j} for {i}: " + "once upon a time " * 20)
                 for i in range(n_items) for j in range(k)]
        for s in range(0, n_items, 1000):
            admin.import_candidates(p["id"], prompts[s:s + 1000], [c for c in cands if int(c.prompt_id[1:]) in range(s, s + 1000)])
        gold: dict[str, list] = {}
        if gold_rate > 0:  # a gated project: gold items at the gold rate, qualification state on every claim
            n_gold = max(5, int(total * gold_rate / labelers) + 5)
            gold = {f"g{i}": [[f"g{i}-{j}"] for j in range(k)] for i in range(n_gold)}
            admin.import_candidates(p["id"], [Prompt(id=g, text=f"Gold item {g}.") for g in gold],
                                    [Candidate(id=f"{g}-{j}", prompt_id=g, text=f"answer {j} to {g}") for g in gold
                                     for j in range(k)], gold=gold)
            admin.update_project(p["id"], gold_rate=gold_rate, pause_below=0.5)
        tokens = {}
        for i in range(labelers):
            name = f"bench-l{i}"
            try:
                admin.create_user(name, "labeler-password")
            except Exception:  # noqa: BLE001 - exists from an earlier run on the same database
                pass
            admin.add_member(p["id"], name)
            tokens[name] = LabelingClient(base).login(name, "labeler-password")
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        load_before = os.getloadavg()[0]
        cpu0, client0, db0 = group_cpu_seconds(proc.pid), time.process_time(), postgres_cpu_seconds()
        acked, edited, ln, ls, counts, elapsed = asyncio.run(run_load(port, tokens, p["id"], total, double_rate, 0,
                                                                      skip_rate, edit_rate, gold, think_ms / 1000))
        server_cpu, client_cpu = group_cpu_seconds(proc.pid) - cpu0, time.process_time() - client0
        db_cpu = postgres_cpu_seconds() - db0 if backend == "postgres" else 0.0
        load_after = os.getloadavg()[0]
        everything = admin.rankings(p["id"])  # every row, corrections included
        stored = [r for r in everything if r.get("supersedes_id") is None]
        corrections = [r for r in everything if r.get("supersedes_id") is not None]
        stored_ids = {r["id"] for r in stored}
        by_task: dict[int, int] = {}
        for r in stored:  # one slot, one ranking: never the same slot to two labelers, never stored twice
            by_task[r["task_id"]] = by_task.get(r["task_id"], 0) + 1
        lost = sum(1 for rid in acked if rid not in stored_ids)
        duplicates = sum(n - 1 for n in by_task.values()) + max(0, len(stored) - len(acked))
        got_fix = {r["id"]: r["supersedes_id"] for r in corrections}
        lost += sum(1 for rid, old in edited.items() if got_fix.get(rid) != old)
        duplicates += max(0, len(corrections) - len(edited))
        return {
            "backend": backend, "server_workers": workers, "labelers": labelers, "submissions": len(acked), "k": k,
            "overlap": overlap, "think_ms": think_ms, "seconds": round(elapsed, 3), "submissions_measured": counts["measured"],
            "submissions_per_s": round(counts["measured"] / elapsed, 1),
            "submissions_per_s_including_warmup": round(len(acked) / counts["total_seconds"], 1),
            "next_p50_ms": round(pct(ln, 50), 1), "next_p99_ms": round(pct(ln, 99), 1),
            "submit_p50_ms": round(pct(ls, 50), 1), "submit_p99_ms": round(pct(ls, 99), 1),
            "lost": lost, "duplicates": duplicates, "errors": counts["errors"], "double_clicks": counts["double_clicks"],
            "double_clicks_deduplicated": counts["double_dup_ok"], "stored": len(stored),
            "skips": counts["skips"], "edits": counts["edits"], "gold_answered": counts["gold_answered"],
            "corrections_stored": len(corrections), "gated": bool(gold),
            "loadavg_before": round(load_before, 2), "loadavg_after": round(load_after, 2),
            "server_cpu_ms_per_submission": round(server_cpu * 1000 / max(1, len(acked)), 3),
            "client_cpu_ms_per_submission": round(client_cpu * 1000 / max(1, len(acked)), 3),
            "postgres_cpu_ms_per_submission": round(db_cpu * 1000 / max(1, len(acked)), 3),
            "server_cpu_share_of_wall": round(server_cpu / counts["total_seconds"], 2),
        }
    finally:
        stop_server(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labelers", type=int, default=50)
    ap.add_argument("--submissions", type=int, default=3000, help="fixed number of rankings to submit")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--overlap", type=int, default=2)
    ap.add_argument("--double-click-rate", type=float, default=0.05)
    ap.add_argument("--skip-rate", type=float, default=0.03, help="share of tasks skipped (a labeler's day)")
    ap.add_argument("--edit-rate", type=float, default=0.03, help="share of submissions corrected at once")
    ap.add_argument("--gold-rate", type=float, default=0.05, help="gold rate of the gated (qualification) project; 0: "
                    "no gold, no gating")
    ap.add_argument("--think-ms", type=float, default=0.0,
                    help="mean think time between a task's arrival and its submission (exponential). 0: a closed loop, "
                    "each labeler asks again the moment an answer arrives — then N labelers keep N requests in flight "
                    "and by Little's law latency = N / throughput, so p99 grows with N whatever the server does; a "
                    "think time makes N labelers offer at most N / think submissions/s")
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--postgres-url", default=os.environ.get("RANKLOOP_BENCH_POSTGRES_URL") or os.environ.get("RANKLOOP_TEST_POSTGRES_URL"))
    ap.add_argument("--postgres-workers", type=int, default=2, help="uvicorn processes in front of PostgreSQL")
    ap.add_argument("--repeat", type=int, default=1, help="runs per backend; the table shows the run of median "
                    "submissions/s, the JSON every run's figures too (one run varies by ±10%% on a shared 2-core machine)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "labeling_load.json")
    args = ap.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as d:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                url, workers = f"sqlite:///{d}/bench.db", 1
            elif backend == "postgres":
                if not args.postgres_url:
                    print("postgres: skipped (no --postgres-url / $RANKLOOP_TEST_POSTGRES_URL)")
                    continue
                url, workers = args.postgres_url, args.postgres_workers
            else:
                raise SystemExit(f"unknown backend {backend!r}")
            runs = []
            for i in range(args.repeat):
                print(f"{backend}: {args.labelers} labelers, {args.submissions} submissions"
                      f"{f' (run {i + 1}/{args.repeat})' if args.repeat > 1 else ''} …", flush=True)
                runs.append(bench_one(backend, url, args.labelers, args.submissions, args.k, args.overlap, workers,
                                      args.double_click_rate, ROOT / "bench" / "results" / f"labeling_load_{backend}.log",
                                      args.skip_rate, args.edit_rate, args.gold_rate, args.think_ms))
            median = sorted(runs, key=lambda r: r["submissions_per_s"])[(len(runs) - 1) // 2]
            if len(runs) > 1:
                keep = ("submissions_per_s", "next_p50_ms", "next_p99_ms", "submit_p50_ms", "submit_p99_ms",
                        "server_cpu_ms_per_submission", "postgres_cpu_ms_per_submission", "loadavg_after")
                median = {**median, "repeat": len(runs), "runs": [{k: r[k] for k in keep} for r in runs],
                          "lost": sum(r["lost"] for r in runs), "duplicates": sum(r["duplicates"] for r in runs)}
            results.append(median)

    cols = [("backend", "backend"), ("server_workers", "procs"), ("labelers", "labelers"), ("think_ms", "think ms"),
            ("submissions", "subs"),
            ("submissions_per_s", "subs/s"), ("next_p50_ms", "next p50"), ("next_p99_ms", "next p99"),
            ("submit_p50_ms", "submit p50"), ("submit_p99_ms", "submit p99"), ("lost", "lost"), ("duplicates", "dups"),
            ("double_clicks_deduplicated", "dbl-clicks ok"), ("skips", "skips"), ("edits", "edits"),
            ("gold_answered", "gold"), ("server_cpu_ms_per_submission", "srv cpu ms/sub"),
            ("server_cpu_share_of_wall", "srv cores"), ("postgres_cpu_ms_per_submission", "pg cpu ms/sub"),
            ("loadavg_after", "load")]
    widths = [max(len(h), *(len(str(r[c])) for r in results)) if results else len(h) for c, h in cols]
    print("  ".join(h.rjust(w) for (_, h), w in zip(cols, widths)))
    for r in results:
        print("  ".join(str(r[c]).rjust(w) for (c, _), w in zip(cols, widths)))
    print(f"steady state, after a warm-up of one cycle per labeler (all {args.labelers} start at the same instant)"
          f"{f'; the run of median subs/s of {args.repeat} (lost, dups: all runs)' if args.repeat > 1 else ''};\n"
          "latencies in ms; 'srv cpu ms/sub' = server CPU per submission (next + submit), 'srv cores' = CPU the server\n"
          "got during the run; 'load' = 1-minute load average after the run (other jobs on the machine included)")
    meta = {"machine": {"cpus": os.cpu_count(), "platform": sys.platform}, "target": {"sqlite_submissions_per_s": 300,
            "sqlite_p99_ms": 150, "labelers": 50}, "args": {k: str(v) for k, v in vars(args).items() if k != "postgres_url"}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, **meta}, indent=2) + "\n")
    print(f"wrote {args.out}")
    bad = [r for r in results if r["lost"] or r["duplicates"]]
    if bad:
        raise SystemExit("FAILED: lost or duplicated rankings")


if __name__ == "__main__":
    main()
