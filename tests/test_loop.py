"""The closed loop on a real (tiny, pre-trained) model, the real labeling app and SQLite:
stage records, resume after SIGKILL, re-running only what a changed setting feeds, human mode
over real HTTP, and active selection."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from rankloop.corpus import make_prompts
from rankloop.io import read_preferences, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A very small model pre-trained for a few steps on the generated corpus (cached per module)."""
    from rankloop.pretrain import PretrainConfig, pretrain

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("RANKLOOP_CACHE")
    os.environ["RANKLOOP_CACHE"] = str(cache)  # the killed-and-resumed subprocess inherits it
    cfg = PretrainConfig(corpus_size=2000, vocab_size=400, hidden=32, layers=2, heads=2, steps=60, batch_size=16)
    yield pretrain(cfg, progress=False)
    if old is None:
        os.environ.pop("RANKLOOP_CACHE", None)
    else:
        os.environ["RANKLOOP_CACHE"] = old


def _config(tmp: Path, policy: Path, **over) -> dict:
    train, held = make_prompts(seed=0, n_train=8, n_eval=4)
    write_jsonl(tmp / "prompts.jsonl", train)
    write_jsonl(tmp / "eval.jsonl", held)
    cfg = {
        "output": str(tmp / "run"), "policy": str(policy), "prompts": str(tmp / "prompts.jsonl"),
        "eval_prompts": str(tmp / "eval.jsonl"), "rounds": 1, "k": 3,
        "sampling": {"max_new_tokens": 16},
        "labeling": {"labelers": 2, "overlap": 2},
        "reward": {"epochs": 1, "batch_size": 4, "max_length": 64},
        "ppo": {"iterations": 3, "batch_size": 4, "minibatch_size": 2, "ppo_epochs": 1, "save_every": 1,
                "learning_rate": 1e-3},
        "eval_samples": 1, "progress": False, "threads": 1,
    }
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    return cfg


ARTIFACTS = ["eval/gold_rankings.jsonl", "eval/initial.json", "round-0/candidates.jsonl", "round-0/selected.jsonl",
             "round-0/rankings.jsonl", "round-0/rm", "round-0/policy", "round-0/eval.json"]


def test_loop_writes_every_stage_and_skips_on_rerun(tmp_path, base_model):
    from rankloop.loop import LoopConfig, run_loop

    cfg = LoopConfig(**_config(tmp_path, base_model))
    timings: list[dict] = []
    run = run_loop(cfg, timings)
    for a in ARTIFACTS:
        assert (run / a).exists(), a
        rec = json.loads((run / f"{a}.stage.json").read_text())
        assert rec["inputs_hash"] and rec["seconds"] >= 0 and rec["peak_rss_mib"] > 0 and "config" in rec
    assert not any(t["skipped"] for t in timings)
    # The rankings came out of the labeling database through the export: 8 prompts × overlap 2.
    rows = read_preferences(run / "round-0" / "rankings.jsonl")
    assert len(rows) == 16 and {r.ranking.labeler for r in rows} == {"sim-labeler-0", "sim-labeler-1"}
    assert (run / "round-0" / "policy" / "config.json").exists()
    assert (run / "round-0" / "rm" / "config.json").exists()
    _check_selection(run)

    # Same config again: everything is skipped, nothing rewritten.
    stamp = (run / "round-0" / "policy" / "model.safetensors").stat().st_mtime_ns
    timings2: list[dict] = []
    run_loop(cfg, timings2)
    assert all(t["skipped"] for t in timings2), timings2
    assert (run / "round-0" / "policy" / "model.safetensors").stat().st_mtime_ns == stamp

    # A changed PPO setting re-runs PPO and what it feeds, not sampling, labeling or the RM.
    cfg3 = LoopConfig(**_config(tmp_path, base_model, ppo={"iterations": 4}))
    timings3: list[dict] = []
    run_loop(cfg3, timings3)
    ran = {t["stage"] for t in timings3 if not t["skipped"]}
    assert ran == {"round 0: PPO", "round 0: evaluate"}, ran

    # A second round continues from round 0's policy; round 0 is not redone.
    cfg4 = LoopConfig(**_config(tmp_path, base_model, ppo={"iterations": 4}, rounds=2))
    timings4: list[dict] = []
    run_loop(cfg4, timings4)
    assert all(t["skipped"] for t in timings4 if t["stage"].startswith(("round 0", "eval", "evaluate the")))
    assert (run / "round-1" / "policy" / "model.safetensors").exists()
    r1 = json.loads((run / "round-1" / "policy.stage.json").read_text())
    assert r1["inputs"]["policy"].endswith("round-0/policy")
    assert len(read_preferences(run / "round-1" / "rm_data.jsonl")) == 32  # all rankings so far

    from rankloop.report import summarise, write_report

    report = write_report(run, summarise(run), print_table=False)
    assert "data:image/png;base64" in report.read_text()


def test_killed_loop_resumes(tmp_path, base_model):
    """SIGKILL during PPO; the same command finishes the run without redoing earlier stages."""
    cfg = _config(tmp_path, base_model, ppo={"iterations": 6})
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "rankloop.cli", "loop", "--config", str(tmp_path / "loop.yaml"), "--no-progress",
           "--no-report"]
    env = {**os.environ, "RANKLOOP_CACHE": os.environ["RANKLOOP_CACHE"]}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpts = tmp_path / "run" / "round-0" / "policy" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ckpts.exists() and any(p.name.startswith("iter-") for p in ckpts.iterdir()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = tmp_path / "run"
    assert (run / "round-0" / "rm.stage.json").exists()
    assert not (run / "round-0" / "policy.stage.json").exists()

    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "round 0: label (simulated): done before" in log
    assert "round 0: reward model: done before" in log
    metrics = [json.loads(x) for x in (run / "round-0" / "policy" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == list(range(1, 7))  # resumed, not restarted or doubled
    assert (run / "round-0" / "eval.json").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_human_mode_waits_for_people(tmp_path, base_model):
    """--labelers human: the app runs over real HTTP with the project loaded; a person (here a
    script with the labeler's account) ranks every item and the loop goes on by itself."""
    from rankloop.labeling.client import LabelingClient, LabelingError
    from rankloop.loop import LoopConfig, run_loop

    port = _free_port()
    cfg = LoopConfig(**_config(tmp_path, base_model, labeling={"mode": "human", "port": port, "overlap": 1,
                                                                 "admin_password": "admin-pw-123",
                                                                 "poll_seconds": 0.2},
                               eval_prompts=None))
    errors: list[BaseException] = []

    def run():
        try:
            run_loop(cfg)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    admin = LabelingClient(f"http://127.0.0.1:{port}")
    deadline = time.time() + 300
    project = None
    while time.time() < deadline and not errors:
        try:
            admin.login("admin", "admin-pw-123")
            project = next((p for p in admin.projects() if p["name"] == "rankloop-round-0"), None)
            if project and admin.progress(project["id"])["items"] == 8:
                break
        except Exception:  # noqa: BLE001 - the server is not up yet
            pass
        time.sleep(0.2)
    assert project is not None and not errors, errors
    admin.create_user("alice", "alice-pw-1234")
    admin.add_member(project["id"], "alice")
    alice = LabelingClient(f"http://127.0.0.1:{port}")
    alice.login("alice", "alice-pw-1234")
    n = 0
    while (task := alice.next_task(project["id"])) is not None:
        ids = [c["id"] for c in task["candidates"]]
        alice.submit(task["task_id"], list(reversed(ids)))
        n += 1
    assert n == 8
    t.join(timeout=600)
    assert not t.is_alive() and not errors, errors
    rows = read_preferences(tmp_path / "run" / "round-0" / "rankings.jsonl")
    assert len(rows) == 8 and {r.ranking.labeler for r in rows} == {"alice"}
    assert (tmp_path / "run" / "round-0" / "policy" / "model.safetensors").exists()
    with pytest.raises(Exception):
        LabelingClient(f"http://127.0.0.1:{port}", timeout=2).login("admin", "admin-pw-123")  # app stopped


def _check_selection(run: Path) -> None:
    """Every selection method returns `budget` distinct prompts with K candidates; the uncertainty
    methods pick prompts above the pool's median uncertainty."""
    from rankloop.active import select_prompts
    from rankloop.io import read_candidates, read_prompts

    pool = read_prompts(run / "round-0" / "pool.jsonl")
    cands = read_candidates(run / "round-0" / "candidates.jsonl")
    for method in ("random", "spread", "ensemble"):
        chosen, info = select_prompts(pool, cands, 3, method=method, reward_model=run / "round-0" / "rm",
                                      labeled=[run / "round-0" / "rankings.jsonl"], seed=1)
        assert len(chosen) == 3 and len({p.id for p in chosen}) == 3, method
        if method != "random":
            assert info["uncertainty_chosen_mean"] >= info["uncertainty_pool_median"], info
