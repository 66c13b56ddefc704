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

    # Each stage's typed result, read back from the records (what the report reads).
    from rankloop.loop import read_rounds

    (r0,) = read_rounds(run)
    assert (r0.sample.candidates, r0.select.selected, r0.label.rankings, r0.reward.train_rankings,
            r0.ppo.iterations) == (24, 8, 16, 16, 3)
    assert r0.label.sigma > 0 and 0 <= r0.label.agreement <= 1 and 0 <= r0.reward.rm_accuracy <= 1
    assert r0.eval.gold is not None and r0.eval.kl_from_initial > 0
    rec = json.loads((run / "round-0" / "policy.stage.json").read_text())
    assert rec["result"] == r0.ppo.record() and rec["config"]["ppo"] == _config(tmp_path, base_model)["ppo"]

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
    from rankloop.labeling.client import LabelingClient
    from rankloop.testing import wait_for_project
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
    admin, project = wait_for_project(f"http://127.0.0.1:{port}", "rankloop-round-0", 8, errors, timeout=300, poll=0.2)
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


# ---------------------------------------------------------------- the loop config and stage records (no model)

# Stage records of a `quickstart --tiny` run made before the stage results were typed: the typed
# results must read them and write them back key for key, in the same order.
RECORDS = {
    "GoldEvalResult": {"rankings": 24},
    "SampleResult": {"candidates": 192, "prompts": 48},
    "SelectResult": {"method": "random", "selected": 48, "eligible": 48},
    "LabelResult": {"project": "quickstart-round-0", "database": "sqlite:////tmp/qs/labels.db",
                    "sigma": 0.47584452715409675, "expected_agreement": 0.73, "submitted": 96, "labelers": 4,
                    "app_items_multi": 48, "app_pairwise_agreement": 0.7534722222222222,
                    "app_krippendorff_alpha": 0.5761067708333334, "rankings_in_db": 96, "rankings_exported": 96,
                    "items_exported": 48, "rankings_path": "/tmp/qs/round-0/rankings.jsonl"},
    "RewardResult": {"train_rankings": 96, "rm_accuracy": 0.5902777777777778,
                     "rm_eval": {"rankings": 24, "pairs": 144, "pairwise_accuracy": 0.5902777777777778,
                                 "exact_ranking_accuracy": 0.0, "kendall_tau": 0.18055555555555555,
                                 "mean_margin": 0.48305950037445444, "normalised": True, "skipped": 0,
                                 "max_length": 128}},
    "PPOResult": {"iterations": 10, "final_reward": 1.0749988555908203, "final_kl_ref": 3.0075089931488037,
                  "final_kl_coef": 0.18640764406973603},
    "EvalResult": {"policy": "/tmp/qs/round-0/policy", "samples": 48, "kl_from_initial": 8.005819320678711,
                   "response_tokens": 8.833333015441895, "eos_frac": 1.0, "gold": -0.1867125357748505,
                   "win_rate_vs_initial": 0.5, "proxy": 1.03883348343273, "proxy_initial": 0.2064155466699352},
}


def test_stage_results_read_and_write_the_records_unchanged():
    import rankloop.loop as loop

    for name, rec in {**RECORDS, "RewardResult (no eval set)": {"train_rankings": 8},
                      "EvalResult (initial)": {"policy": "p", "samples": 4, "kl_from_initial": 0.0,
                                               "response_tokens": 3.5, "eos_frac": 0.5, "gold": -0.3},
                      "LabelResult (people)": {"project": "p", "database": "x.db", "app_pairwise_agreement": 0.7,
                                               "rankings_exported": 8}}.items():
        kind = getattr(loop, name.split()[0])
        got = kind.from_record(rec).record()
        assert got == rec and list(got) == list(rec), name
    lab = loop.LabelResult.from_record(RECORDS["LabelResult"])
    assert (lab.rankings, lab.agreement, lab.sigma) == (96, 0.7534722222222222, 0.47584452715409675)
    assert loop.RewardResult.from_record(RECORDS["RewardResult"]).rm_accuracy == 0.5902777777777778


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_examples_loop_yaml_is_a_valid_loop_config():
    from rankloop.loop import LoopConfig

    cfg = LoopConfig.from_file(ROOT / "examples" / "loop.yaml")
    assert cfg.ppo.iterations == 20 and cfg.ppo.kl_target == 3.0 and cfg.reward.lr == 2e-4
    cfg = LoopConfig.from_file(ROOT / "examples" / "loop-instructgpt.yaml")
    assert cfg.algorithm == "rloo" and cfg.rloo.samples_per_prompt == 4 and cfg.dpo.loss == "dpo"
    assert cfg.demonstrations.enabled and cfg.demonstrations.sft.epochs == 3


@pytest.mark.parametrize("section, setting, message", [
    ("ppo", {"iteratons": 5}, r"ppo\.iteratons: Extra inputs are not permitted"),
    ("reward", {"epoch": 2}, r"reward\.epoch: Extra inputs are not permitted"),
    ("ppo", {"kl_control": "adaptve"}, r"ppo\.kl_control: Input should be 'fixed' or 'adaptive'"),
    ("ppo", {"learning_rate": -1}, r"ppo\.learning_rate: Input should be greater than 0"),
    # PPOConfig's checks across fields run on load too
    ("ppo", {"minibatch_size": 64}, r"ppo: minibatch_size \(64\) > batch_size \(32\)"),
    # fields the loop sets every round (ppo.reference used to pass and fail at PPO with a TypeError)
    ("ppo", {"reference": "gpt2", "output": "x"}, r"ppo: the loop sets \['output', 'reference'\] itself"),
    ("reward", {"model": "gpt2"}, r"reward: the loop sets \['model'\] itself"),
    ("rloo", {"reference": "gpt2"}, r"rloo: the loop sets \['reference'\] itself"),
    ("grpo", {"advantage": "grup"}, r"grpo\.advantage: Input should be"),
    ("dpo", {"beta": 0}, r"dpo\.beta: Input should be greater than 0"),
    ("dpo", {"data": "x.jsonl"}, r"dpo: the loop sets \['data'\] itself"),
    ("demonstrations", {"sft": {"model": "gpt2"}}, r"demonstrations\.sft: the loop sets \['model'\] itself"),
])
def test_bad_stage_setting_is_a_config_error_on_load(tmp_path, section, setting, message):
    """A misspelt or invalid `ppo:` / `reward:` setting in the YAML stops the load, naming the field."""
    from rankloop.config import ConfigError
    from rankloop.loop import LoopConfig

    data = yaml.safe_load((ROOT / "examples" / "loop.yaml").read_text())
    data.setdefault(section, {}).update(setting)
    path = _write_yaml(tmp_path / "loop.yaml", data)
    with pytest.raises(ConfigError, match=rf"{path}: invalid LoopConfig: {message}"):
        LoopConfig.from_file(path)


def test_from_file_overrides_and_paths_beside_the_file(tmp_path, monkeypatch):
    from rankloop.config import ConfigError
    from rankloop.loop import LoopConfig

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "prompts.jsonl").write_text("")
    (tmp_path / "here.jsonl").write_text("")
    path = _write_yaml(tmp_path / "cfg" / "loop.yaml", {
        "output": "run", "policy": "gpt2", "prompts": "prompts.jsonl", "eval_prompts": "here.jsonl",
        "rm_eval_data": "nowhere.jsonl", "labeling": {"labelers": 3}, "ppo": {"iterations": 2}})
    cfg = LoopConfig.from_file(path, rounds=3, output=None, labeling={"mode": "human"}, ppo={"batch_size": 16})
    assert cfg.prompts == str(tmp_path / "cfg" / "prompts.jsonl")  # found beside the file only
    assert cfg.eval_prompts == "here.jsonl" and cfg.rm_eval_data == "nowhere.jsonl"  # found here / nowhere
    assert (cfg.rounds, cfg.output, cfg.labeling.mode, cfg.labeling.labelers) == (3, "run", "human", 3)
    assert (cfg.ppo.iterations, cfg.ppo.batch_size) == (2, 16)
    with pytest.raises(ConfigError, match="config file not found"):
        LoopConfig.from_file(tmp_path / "missing.yaml")


def test_stage_configs_take_the_loop_defaults_then_the_round_settings(tmp_path):
    """The configs the loop hands to train_reward_model and run_ppo: the same as before the stage
    settings were typed (the loop's defaults, the loop's seed and response length, the settings)."""
    from rankloop.config import save_config
    from rankloop.loop import LoopConfig, ppo_config, reward_train_config
    from rankloop.reward.train import RewardTrainConfig
    from rankloop.rl.ppo import PPOConfig

    cfg = LoopConfig(output="run", policy="pol", prompts="p.jsonl", seed=7, sampling={"max_new_tokens": 21},
                     reward={"lr": 5e-4, "epochs": 2}, ppo={"iterations": 3, "kl_coef": 0.3, "save_every": 2})
    rcfg = reward_train_config(cfg, Path("d.jsonl"), None, Path("run/rm"), resume=False)
    assert rcfg == RewardTrainConfig(data="d.jsonl", model="pol", output="run/rm", eval_data=None, resume=False,
                                     progress=True, epochs=2, lr=5e-4, batch_size=8, max_length=128, seed=7)
    pcfg = ppo_config(cfg, "run/round-0/policy-in", Path("run/train_prompts.jsonl"), Path("run/policy"), resume=True)
    assert pcfg == PPOConfig(policy="run/round-0/policy-in", reference="pol", prompts="run/train_prompts.jsonl",
                             output="run/policy", resume=True, progress=True, iterations=3, batch_size=32,
                             minibatch_size=8, ppo_epochs=4, learning_rate=3e-4, kl_control="adaptive", kl_coef=0.3,
                             kl_target=4.0, kl_horizon=2000, max_new_tokens=21, seed=7, missing_eos_penalty=1.0,
                             save_every=2)
    # A round's setting beats what the loop passes down.
    cfg2 = LoopConfig(output="run", policy="pol", prompts="p.jsonl", seed=7, reward={"seed": 1},
                      ppo={"seed": 2, "max_new_tokens": 5})
    assert reward_train_config(cfg2, Path("d"), None, Path("o"), resume=False).seed == 1
    assert (ppo_config(cfg2, "pol", Path("p"), Path("o"), resume=False).seed,
            ppo_config(cfg2, "pol", Path("p"), Path("o"), resume=False).max_new_tokens) == (2, 5)

    # The settings are typed, and the saved loop config keeps them as written (what the stage
    # records hash), so a saved config loads back to the same settings.
    assert cfg.reward.epochs == 2.0 and isinstance(cfg.reward.epochs, float)
    assert cfg.reward.given() == {"lr": 5e-4, "epochs": 2}
    save_config(cfg, tmp_path / "loop_config.json")
    saved = json.loads((tmp_path / "loop_config.json").read_text())
    assert saved["reward"] == {"lr": 5e-4, "epochs": 2} and saved["ppo"] == {"iterations": 3, "kl_coef": 0.3,
                                                                            "save_every": 2}
    assert LoopConfig.model_validate(saved).ppo.given() == cfg.ppo.given()


# ---------------------------------------------------------------- every learner, and round 0 (issues 12-14)

LEARNER_SETTINGS = {
    "rloo": {"iterations": 2, "batch_size": 2, "samples_per_prompt": 2, "minibatch_size": 2, "save_every": 1,
             "learning_rate": 1e-3},
    "grpo": {"iterations": 2, "batch_size": 2, "samples_per_prompt": 2, "minibatch_size": 2, "save_every": 1,
             "learning_rate": 1e-3},
    "dpo": {"epochs": 1, "batch_size": 4, "max_length": 64, "lr": 1e-3, "kl_prompts": 2, "kl_max_new_tokens": 8},
}


@pytest.mark.parametrize("algorithm", ["rloo", "grpo", "dpo"])
def test_each_learner_runs_two_rounds_and_resumes(tmp_path, base_model, algorithm):
    from rankloop.loop import DPOResult, GroupResult, LoopConfig, read_rounds, run_loop
    from rankloop.report import summarise

    cfg = LoopConfig(**_config(tmp_path, base_model, rounds=2, algorithm=algorithm,
                               **{algorithm: LEARNER_SETTINGS[algorithm]}))
    timings: list[dict] = []
    run = run_loop(cfg, timings)
    rounds = read_rounds(run)
    assert [r.algorithm for r in rounds] == [algorithm, algorithm]
    for r in rounds:
        assert r.ppo is None and r.eval is not None and r.reward is not None
        rec = json.loads((run / f"round-{r.round}" / "policy.stage.json").read_text())
        assert rec["config"]["algorithm"] == algorithm and rec["stage"] == f"round {r.round}: {algorithm.upper()}"
        assert (run / f"round-{r.round}" / "policy" / "model.safetensors").exists()
        if algorithm == "dpo":
            assert isinstance(r.learner, DPOResult)
            # every ranking so far: round 1 trains on both rounds' rankings
            assert r.learner.train_rankings == len(read_preferences(run / f"round-{r.round}" / "rm_data.jsonl"))
            assert r.learner.eval_accuracy is not None and r.learner.final_loss is not None
        else:
            assert isinstance(r.learner, GroupResult) and r.learner.iterations == 2
            assert r.learner.final_kl_ref is not None and r.learner.final_kl_ref >= 0
            assert len((run / f"round-{r.round}" / "policy" / "gold.jsonl").read_text().splitlines()) == 2
    # round 1 continued from round 0's policy
    r1 = json.loads((run / "round-1" / "policy.stage.json").read_text())
    assert r1["inputs"]["policy"] == str(run / "round-0" / "policy")
    assert rounds[1].learner.train_rankings > rounds[0].learner.train_rankings if algorithm == "dpo" else True
    # the report has a row per round naming the learner
    s = summarise(run)
    assert [row["algorithm"] for row in s["rounds"]] == [algorithm, algorithm]
    # a second run skips every finished stage
    again: list[dict] = []
    run_loop(cfg, again)
    assert again and all(t["skipped"] for t in again), [t["stage"] for t in again if not t["skipped"]]


def test_dpo_without_a_reward_model(tmp_path, base_model):
    from rankloop.loop import LoopConfig, read_rounds, run_loop

    cfg = LoopConfig(**_config(tmp_path, base_model, algorithm="dpo", train_reward_model=False,
                               dpo=LEARNER_SETTINGS["dpo"]))
    run = run_loop(cfg)
    (r0,) = read_rounds(run)
    assert r0.reward is None and not (run / "round-0" / "rm").exists()
    assert r0.eval is not None and r0.eval.proxy is None and r0.eval.gold is not None


def test_train_reward_model_off_needs_dpo(tmp_path, base_model):
    from rankloop.loop import LoopConfig

    with pytest.raises(ValueError, match="train_reward_model: false needs algorithm dpo"):
        LoopConfig(**_config(tmp_path, base_model, train_reward_model=False))


def _demonstrations_file(path: Path, prompts_path: Path) -> Path:
    """What a demonstration project's export holds: one accepted answer per prompt, written by a
    simulated demonstrator (``rankloop.simulate``)."""
    from rankloop.corpus import gold_scores, write_answer
    from rankloop.io import read_prompts
    from rankloop.records import Demonstration
    from rankloop.simulate import SimulatedDemonstrator

    d = SimulatedDemonstrator("sim-demonstrator-0", 0.3, gold_scores, write_answer, seed=0)
    rows = [Demonstration(prompt_id=p.id, prompt=p.text, response=d.demonstrate(p.text), labeler=d.name,
                          review="accepted").to_row() for p in read_prompts(prompts_path)]
    write_jsonl(path, rows)
    return path


@pytest.mark.parametrize("algorithm,source", [("ppo", "file"), ("dpo", "app")])
def test_demonstrations_train_sft_which_starts_the_policy_and_is_the_reference(tmp_path, base_model, algorithm,
                                                                               source):
    """Round 0: demonstrations — from a file, or written by simulated demonstrators through the
    labeling app's API and out through its export — then SFT, which the learner starts from and
    is held to."""
    from rankloop.labeling.client import LabelingClient
    from rankloop.loop import LoopConfig, SFTResult, read_demonstrations_stage, run_loop
    from rankloop.report import summarise

    data = _config(tmp_path, base_model, algorithm=algorithm, dpo=LEARNER_SETTINGS["dpo"])
    data["demonstrations"] = {"enabled": True, "min_gold": -10.0,
                              "sft": {"epochs": 2, "batch_size": 4, "max_length": 128, "lr": 1e-3}}
    if source == "file":
        data["demonstrations"]["data"] = str(_demonstrations_file(tmp_path / "demos.jsonl", tmp_path / "prompts.jsonl"))
    cfg = LoopConfig(**data)
    run = run_loop(cfg)
    sft = run / "demonstrations" / "policy"
    demo_res, sft_res, sft_eval = read_demonstrations_stage(run)
    assert demo_res is not None and demo_res.demonstrations == 8
    if source == "app":
        from fastapi.testclient import TestClient

        from rankloop.labeling.app import create_app

        assert demo_res.source == "simulated" and demo_res.figures["submitted"] == 8
        assert demo_res.figures["reviewed_accepted"] == 8
        pw = (run / ".admin-password").read_text().strip()
        with TestClient(create_app(f"sqlite:///{run / 'labels.db'}", admin=("admin", pw))) as http:
            admin = LabelingClient(http)
            admin.login("admin", pw)
            (proj,) = [p for p in admin.projects() if p["name"] == "rankloop-demonstrations"]
            stored = admin.demonstrations(proj["id"])
        assert len(stored) == 8 and {d["review"] for d in stored} == {"accepted"}
        assert {d["labeler"] for d in stored} == {"sim-demonstrator-0", "sim-demonstrator-1"}
        exported = [json.loads(x) for x in (run / "demonstrations" / "demonstrations.jsonl").read_text().splitlines()]
        assert sorted(r["response"] for r in exported) == sorted(d["response"] for d in stored)
    assert isinstance(sft_res, SFTResult) and sft_res.demonstrations == 8 and sft_res.steps == 4
    assert (sft / "model.safetensors").exists() and sft_eval is not None and sft_eval.gold is not None
    # the SFT model is where round 0's learner starts, and its reference
    rec = json.loads((run / "round-0" / "policy.stage.json").read_text())
    assert rec["inputs"]["policy"] == str(sft) and rec["inputs"]["reference"] == str(sft)
    saved = json.loads((run / "round-0" / "policy" / ("ppo_config.json" if algorithm == "ppo"
                                                       else "train_config.json")).read_text())
    if algorithm == "ppo":
        assert saved["policy"] == str(sft) and saved["reference"] == str(sft)
    else:
        assert saved["model"] == str(sft) and saved["reference"] is None  # None: the starting model = SFT
    ev = json.loads((run / "round-0" / "eval.json.stage.json").read_text())
    assert ev["inputs"]["reference"] == str(sft)
    s = summarise(run)
    assert s["sft"]["demonstrations"] == 8 and s["sft"]["gold"] == sft_eval.gold
    # rerun: every stage, round 0's included, is done before
    again: list[dict] = []
    run_loop(cfg, again)
    assert all(t["skipped"] for t in again), [t["stage"] for t in again if not t["skipped"]]
    # a changed SFT setting re-runs SFT and everything it feeds
    cfg2 = LoopConfig(**{**data, "demonstrations": {**data["demonstrations"], "sft": {
        **data["demonstrations"]["sft"], "epochs": 1}}})
    third: list[dict] = []
    run_loop(cfg2, third)
    redone = {t["stage"] for t in third if not t["skipped"]}
    assert {"round 0: SFT", f"round 0: {algorithm.upper()}", "round 0: sample"} <= redone, redone
    assert not any(st.startswith("round 0: demonstrations") for st in redone), redone


def test_bad_demonstrations_file_is_a_clear_error(tmp_path, base_model):
    from rankloop.loop import LoopConfig, run_loop

    bad = tmp_path / "demos.jsonl"
    bad.write_text('{"prompt_id": "p0", "prompt": "Q: hi\\nA:", "response": "ok.", "review": "accepted"}\n'
                   '{"prompt_id": "p1", "prompt": "Q: hi\\nA:"}\n')
    data = _config(tmp_path, base_model)
    data["demonstrations"] = {"enabled": True, "data": str(bad)}
    from rankloop.io import DataError

    with pytest.raises(DataError, match=r"demos.jsonl:2: "):
        run_loop(LoopConfig(**data))
