"""RLOO on real tiny models: smoke (several weighted rewards, each logged), invariants (KL exactly 0
at the start, grad accumulation, 2-process DDP, resume after SIGKILL), the bad-input list and the CLI."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rankloop.config import ConfigError
from rankloop.rl.rewards import RewardError
from rankloop.rl.rloo import NonFiniteError, RLOOConfig, run_rloo
from rankloop.rl.steps import _prompt_indices

from .test_ppo import PROMPT_TEXTS, assert_same, weights

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture
def prompts_file(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(PROMPT_TEXTS)))
    return p


def small(cls, policy, out, prompts, **kw):
    base = dict(policy=str(policy), output=str(out), prompts=str(prompts), reward="rankloop.rl.rewards:length",
                iterations=2, batch_size=4, samples_per_prompt=4, minibatch_size=8, epochs=2, max_new_tokens=6,
                learning_rate=3e-3, progress=False, tensorboard=False)
    base.update(kw)
    return cls(**base)


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def cli(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([PY, "-m", "rankloop.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, **kw)


def cli_args(learner, policy, prompts, out, iterations, *extra):
    return [learner, "--policy", str(policy), "--reward", "rankloop.rl.rewards:length", "--prompts", str(prompts),
            "--output", str(out), "--iterations", str(iterations), "--batch-size", "4", "-k", "4",
            "--minibatch-size", "8", "--epochs", "2", "--max-new-tokens", "6", "--lr", "3e-3", "--no-progress",
            *extra]


def sigkill_then_resume_equals_uninterrupted(learner, policy, prompts, tmp_path):
    """The pattern of test_ppo's: a run killed after its second checkpoint and resumed ends with the
    weights and metrics rows of one that was never interrupted."""
    full = tmp_path / "full"
    r = cli(cli_args(learner, policy, prompts, full, 5))
    assert r.returncode == 0, r.stderr
    killed = tmp_path / "killed"
    proc = subprocess.Popen([PY, "-m", "rankloop.cli", *cli_args(learner, policy, prompts, killed, 5)], cwd=ROOT,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "iter-000002" / "state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()
    r = cli(cli_args(learner, policy, prompts, killed, 5, "--resume"))
    assert r.returncode == 0, r.stderr
    assert_same(weights(full), weights(killed))
    assert [x["iteration"] for x in rows(killed)] == [1, 2, 3, 4, 5]
    a, b = rows(full), rows(killed)
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if not k.startswith("time/")} == \
               {k: v for k, v in y.items() if not k.startswith("time/")}


def two_processes_equal_one(learner, policy, prompts, tmp_path, port, fsdp: bool = False, wrap: str | None = None):
    """2 gloo processes ≡ 1: data-parallel (torchrun), or with ``fsdp`` FSDP2 as a user launches it
    (accelerate with examples/accelerate/fsdp2.yaml: the policy sharded, the reference and the reward
    replicated, sampling on the gathered weights); ``wrap`` names the decoder-layer class made an FSDP
    unit of its own (``fsdp_transformer_layer_cls_to_wrap``)."""
    # A larger Adam eps (see test_ppo's grad-accumulation test): float noise in near-zero gradients
    # — many groups of the length reward tie — would otherwise be blown up to whole steps.
    conf = tmp_path / "conf.yaml"
    conf.write_text("adam_eps: 1.0e-4\n")
    one = tmp_path / "one"
    r = cli(cli_args(learner, policy, prompts, one, 2, "--config", str(conf)))
    assert r.returncode == 0, r.stderr
    two = tmp_path / "two"
    launch = ([PY, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "examples/accelerate/fsdp2.yaml"),
               "--num_processes", "2", "--main_process_port", str(port),
               *(["--fsdp_transformer_layer_cls_to_wrap", wrap] if wrap else [])] if fsdp else
              [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)])
    r = subprocess.run([*launch, "-m", "rankloop.cli", *cli_args(learner, policy, prompts, two, 2, "--config", str(conf))],
                       cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    state = json.loads((two / "checkpoints" / "iter-000002" / "state.json").read_text())
    assert state.get("fsdp", False) is fsdp  # it did run sharded (or not)
    if fsdp:
        assert not (two / "checkpoints" / "iter-000002" / "optimizer.pt").exists()
        ckpt = load_file(str(two / "checkpoints" / "iter-000002" / "trainable.safetensors"))
        final = weights(two)
        assert all(torch.equal(ckpt[f"lm.{k}"], v) for k, v in final.items() if f"lm.{k}" in ckpt)
    assert_same(weights(one), weights(two), atol=2e-6)
    for a, b in zip(rows(one), rows(two)):
        assert a["objective/reward"] == pytest.approx(b["objective/reward"], abs=1e-6)
        assert a[f"{learner}/approx_kl"] == pytest.approx(b[f"{learner}/approx_kl"], rel=1e-3, abs=1e-7)


# ---------------------------------------------------------------- smoke and invariants


def test_rloo_smoke_with_weighted_rewards_each_logged(tiny_gpt2, prompts_file, tmp_path):
    words = tmp_path / "words.py"
    words.write_text("def has_the(prompts, responses):\n    return [float('the' in r.split()) for r in responses]\n")
    cfg = small(RLOOConfig, tiny_gpt2, tmp_path / "run", prompts_file,
                reward=["rankloop.rl.rewards:length", f"{words}:has_the"], reward_weights=[1.0, 0.5])
    out = run_rloo(cfg)
    m = rows(out)
    assert [r["iteration"] for r in m] == [1, 2]
    for name in ("objective/reward", "objective/reward/length", "objective/reward/has_the", "objective/entropy",
                 "objective/kl_k1", "rloo/kl_ref", "rloo/approx_kl", "rloo/clip_frac", "rloo/policy_loss",
                 "response/length", "time/iteration"):
        assert name in m[0] and math.isfinite(m[0][name]), name
    for r in m:  # the logged total is the weighted sum of the logged components
        assert r["objective/reward"] == pytest.approx(r["objective/reward/length"] + 0.5 * r["objective/reward/has_the"],
                                                      abs=1e-6)
    assert m[0]["rloo/kl_ref"] < 1e-5 and m[1]["rloo/kl_ref"] > 0
    before, after = weights(tiny_gpt2), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not (out / "value_head.safetensors").exists()  # no value model
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(out))
    assert json.loads((out / "rloo_config.json").read_text())["samples_per_prompt"] == 4


def test_first_rollout_kl_exactly_zero_with_forward_logprobs(tiny_gpt2, prompts_file, tmp_path):
    for lora in (False, True):  # frozen copy, and the LoRA policy with its adapter off
        out = run_rloo(small(RLOOConfig, tiny_gpt2, tmp_path / f"run{lora}", prompts_file, iterations=1,
                             old_logprobs="forward", lora=lora))
        row = rows(out)[0]
        assert row["rloo/kl_ref"] == 0.0 and row["objective/kl_k1"] == 0.0
        assert row["objective/reward_penalised"] == pytest.approx(row["objective/score"], abs=0)  # R = r − β·0


def test_grad_accumulation_equals_bigger_minibatch(tiny_gpt2, prompts_file, tmp_path):
    def cfg(name, **kw):  # a larger Adam eps: see test_ppo's test of the same name
        return small(RLOOConfig, tiny_gpt2, tmp_path / name, prompts_file, adam_eps=1e-4, **kw)

    a = run_rloo(cfg("a", grad_accum_steps=1, max_grad_norm=None))
    b = run_rloo(cfg("b", grad_accum_steps=4, max_grad_norm=None))
    assert_same(weights(a), weights(b), atol=2e-6)
    c = run_rloo(cfg("c", grad_accum_steps=2))  # with clipping too
    d = run_rloo(cfg("d", grad_accum_steps=1))
    assert_same(weights(c), weights(d), atol=2e-6)


def test_cli_sigkill_then_resume_equals_uninterrupted(tiny_gpt2, prompts_file, tmp_path):
    sigkill_then_resume_equals_uninterrupted("rloo", tiny_gpt2, prompts_file, tmp_path)


@pytest.mark.slow
def test_two_process_data_parallel_equals_one_process(tiny_gpt2, prompts_file, tmp_path):
    two_processes_equal_one("rloo", tiny_gpt2, prompts_file, tmp_path, 29531)


@pytest.mark.slow
@pytest.mark.parametrize("wrap", [None, "GPT2Block"])  # the whole model one FSDP unit, or one unit per layer
def test_two_processes_fsdp2_equal_one_process(tiny_gpt2, prompts_file, tmp_path, wrap):
    two_processes_equal_one("rloo", tiny_gpt2, prompts_file, tmp_path, 29541 if wrap is None else 29542, fsdp=True,
                            wrap=wrap)


# ---------------------------------------------------------------- bad input


def test_k_below_two_is_refused(tiny_gpt2, prompts_file, tmp_path):
    with pytest.raises(ValueError, match=r"K\) is 1; a group method needs K ≥ 2"):
        small(RLOOConfig, tiny_gpt2, tmp_path / "o", prompts_file, samples_per_prompt=1)
    r = cli(cli_args("rloo", tiny_gpt2, prompts_file, tmp_path / "o", 1, "-k", "1"))
    assert r.returncode == 2 and "K ≥ 2" in " ".join(r.stderr.split())


def test_weights_that_do_not_match_the_rewards(tiny_gpt2, prompts_file, tmp_path):
    with pytest.raises(ValueError, match="reward_weights has 1 weights for 2 reward"):
        small(RLOOConfig, tiny_gpt2, tmp_path / "o", prompts_file,
              reward=["rankloop.rl.rewards:length", "rankloop.rl.rewards:length"], reward_weights=[1.0])
    r = cli(cli_args("rloo", tiny_gpt2, prompts_file, tmp_path / "o", 1, "--reward-weight", "1", "--reward-weight", "2"))
    assert r.returncode == 2 and "2 weights for 1 reward" in " ".join(r.stderr.split())


def _failing_at_second_call(kind):
    calls = {"n": 0}

    def reward(prompts, responses):
        calls["n"] += 1
        vals = [1.0] * len(responses)
        if calls["n"] == 2:
            if kind == "length":
                return vals[:-1]
            vals[5] = {"nan": math.nan, "word": "good"}[kind]
        return vals
    return reward


@pytest.mark.parametrize("kind", ["nan", "word", "length"])
def test_bad_reward_stops_naming_the_prompt_and_the_last_good_checkpoint(tiny_gpt2, prompts_file, tmp_path, kind):
    cfg = small(RLOOConfig, tiny_gpt2, tmp_path / "bad", prompts_file, iterations=3)
    with pytest.raises(NonFiniteError if kind == "nan" else RewardError) as e:
        run_rloo(cfg, reward_fn=_failing_at_second_call(kind))
    msg = str(e.value)
    ckpt = tmp_path / "bad" / "checkpoints" / "iter-000001"
    assert "iteration 2" in msg and "score" in msg and str(ckpt) in msg, msg
    if kind != "length":  # response row 5 = prompt row 1 of iteration 2 (K = 4)
        assert f"prompt index {_prompt_indices(len(PROMPT_TEXTS), 0, 1, 4)[1]}" in msg, msg
    assert {"nan": "non-finite rewards", "word": "non-number 'good'", "length": "returned 15 values for 16"}[kind] in msg
    assert (ckpt / "state.json").exists() and not (tmp_path / "bad" / "checkpoints" / "iter-000002").exists()


def test_missing_prompts_or_reward_are_config_errors(tiny_gpt2, tmp_path):
    with pytest.raises(ConfigError, match="no prompts"):
        run_rloo(RLOOConfig(policy=str(tiny_gpt2), output=str(tmp_path / "o"), reward="rankloop.rl.rewards:length"))
