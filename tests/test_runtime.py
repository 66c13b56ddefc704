"""The shared training runtime: the run directory's checkpoints, metrics across a resume, the RNG
state and the non-finite guard (the trainers' own invariants are in tests/reward and tests/rl)."""

import json
import random

import numpy as np
import pytest
import torch

from rankloop.runtime import (FiniteGuard, JSONLTracker, NonFiniteError, RunDir, make_accelerator, rng_state,
                              set_rng_state, trackers, tracking, write_dir_atomically)


def test_checkpoints_are_atomic_latest_complete_and_pruned(tmp_path):
    acc = make_accelerator()
    run = RunDir(tmp_path / "out", acc, prefix="iter", complete="state.json", keep=2)
    run.begin(resumed_at=0)
    assert run.latest() is None
    for step in (1, 2, 3):
        run.save(step, lambda d, s=step: (d / "state.json").write_text(json.dumps({"step": s})))
    names = sorted(p.name for p in run.checkpoints.iterdir())
    assert names == ["iter-000002", "iter-000003"]  # keep-N
    assert json.loads((run.latest() / "state.json").read_text()) == {"step": 3}
    # A write killed half-way leaves a temporary directory, never a checkpoint that looks complete.
    with pytest.raises(RuntimeError):
        run.save(4, lambda d: ((d / "state.json").write_text("{}"), (_ for _ in ()).throw(RuntimeError("killed"))))
    assert run.latest().name == "iter-000003" and (run.checkpoints / ".tmp-iter-000004").exists()
    run.begin(resumed_at=3)  # a resume clears the leftovers of a killed write
    assert not (run.checkpoints / ".tmp-iter-000004").exists() and run.latest().name == "iter-000003"
    run.begin(resumed_at=0)  # a fresh run starts from nothing
    assert run.latest() is None


def test_write_dir_atomically_replaces_a_whole_directory(tmp_path):
    target = tmp_path / "model"
    write_dir_atomically(target, lambda d: (d / "a").write_text("old"))
    write_dir_atomically(target, lambda d: (d / "b").write_text("new"))
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert not list(tmp_path.glob(".tmp-*")) and not list(tmp_path.glob(".old-*"))


def test_metrics_survive_a_resume_without_the_rows_past_the_checkpoint(tmp_path):
    out = tmp_path / "out"
    acc = make_accelerator(trackers(out, "step", tensorboard=False), out)
    run = RunDir(out, acc, prefix="step", complete="done", keep=1)
    run.begin(resumed_at=0)
    with tracking(acc):
        for s in range(1, 6):
            acc.log({"step": s, "loss": 1.0 / s}, step=s)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    run.begin(resumed_at=3)  # killed after step 5, resumed from the checkpoint of step 3
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    run.begin(resumed_at=0)
    assert not (out / "metrics.jsonl").exists()


def test_jsonl_tracker_truncate_keeps_rows_up_to_the_step(tmp_path):
    t = JSONLTracker(tmp_path / "m.jsonl", "iteration")
    for i in (1, 2, 3):
        t.log({"iteration": i, "x": i})
    t.truncate(2)
    assert [json.loads(x)["iteration"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == [1, 2]


def test_rng_state_round_trip_restores_every_generator():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_finite_guard_names_the_step_and_the_last_good_checkpoint(tmp_path):
    g = FiniteGuard("iteration")
    g.check(torch.ones(3), "loss", 1, "update")  # finite: nothing happens
    with pytest.raises(NonFiniteError, match=r"non-finite loss at iteration 2, step 'update'.*none \(no checkpoint"):
        g.check(torch.tensor([1.0, float("nan")]), "loss", 2, "update")
    g.last_good = tmp_path / "iter-000002"
    with pytest.raises(NonFiniteError, match="Last good checkpoint: .*iter-000002 .intact"):
        g.check(torch.tensor(float("inf")), "rewards", 3, "score")
