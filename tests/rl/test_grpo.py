"""GRPO on real tiny models: smoke, invariants (KL exactly 0 at the start, grad accumulation for each
loss aggregation, 2-process DDP, resume after SIGKILL), the verifiable reward on a generated
arithmetic task, and its bad input."""

import math

import pytest
import torch

from rankloop.rl.grpo import GRPOConfig, run_grpo
from rankloop.rl.rewards import (RewardError, arithmetic_task, call_reward, exact_answer, final_answer,
                                 normalise_answer)

from .test_ppo import assert_same, weights
from .test_rloo import cli, prompts_file, rows, sigkill_then_resume_equals_uninterrupted, small, \
    two_processes_equal_one  # noqa: F401 (prompts_file is a fixture)


def test_grpo_smoke_moves_parameters_with_the_kl_in_the_loss(tiny_gpt2, prompts_file, tmp_path):
    out = run_grpo(small(GRPOConfig, tiny_gpt2, tmp_path / "run", prompts_file, iterations=3))
    m = rows(out)
    for name in ("objective/reward", "objective/entropy", "grpo/kl_ref", "grpo/kl_loss", "grpo/approx_kl",
                 "grpo/clip_frac", "grpo/policy_loss", "grpo/tied_groups", "response/length"):
        assert name in m[0] and math.isfinite(m[0][name]), name
    assert m[0]["grpo/kl_ref"] < 1e-5 and m[-1]["grpo/kl_ref"] > 0 and m[-1]["grpo/kl_loss"] > 0
    before, after = weights(tiny_gpt2), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not (out / "value_head.safetensors").exists()


def test_first_rollout_kl_exactly_zero_with_forward_logprobs(tiny_gpt2, prompts_file, tmp_path):
    # one minibatch of all 16 rows, one epoch: the only step's policy is the reference
    out = run_grpo(small(GRPOConfig, tiny_gpt2, tmp_path / "run", prompts_file, iterations=1, epochs=1,
                         minibatch_size=16, old_logprobs="forward"))
    row = rows(out)[0]
    assert row["grpo/kl_ref"] == 0.0 and row["objective/kl_k1"] == 0.0
    assert row["grpo/kl_loss"] == 0.0 and row["grpo/approx_kl"] == 0.0


@pytest.mark.parametrize("advantage", ["group_mean", "batch"])
def test_dr_grpo_and_batch_advantages_run(tiny_gpt2, prompts_file, tmp_path, advantage):
    out = run_grpo(small(GRPOConfig, tiny_gpt2, tmp_path / advantage, prompts_file, iterations=1,
                         advantage=advantage, loss_aggregation="constant", kl_estimator="k2"))
    assert math.isfinite(rows(out)[0]["grpo/policy_loss"])


@pytest.mark.parametrize("aggregation", ["token", "sequence", "constant"])
def test_grad_accumulation_equals_bigger_minibatch(tiny_gpt2, prompts_file, tmp_path, aggregation):
    def cfg(name, **kw):  # a larger Adam eps: see test_ppo's test of the same name
        return small(GRPOConfig, tiny_gpt2, tmp_path / name, prompts_file, adam_eps=1e-4, max_grad_norm=None,
                     loss_aggregation=aggregation, stop_token_ids=list(range(3, 60)), **kw)  # responses of mixed lengths

    a = run_grpo(cfg("a", grad_accum_steps=1))
    b = run_grpo(cfg("b", grad_accum_steps=4))
    assert rows(a)[0]["response/length"] < 6  # some responses stopped early: the aggregations differ
    assert_same(weights(a), weights(b), atol=2e-6)


def test_cli_sigkill_then_resume_equals_uninterrupted(tiny_gpt2, prompts_file, tmp_path):
    sigkill_then_resume_equals_uninterrupted("grpo", tiny_gpt2, prompts_file, tmp_path)


@pytest.mark.slow
def test_two_process_data_parallel_equals_one_process(tiny_gpt2, prompts_file, tmp_path):
    two_processes_equal_one("grpo", tiny_gpt2, prompts_file, tmp_path, 29533)


@pytest.mark.slow
def test_two_processes_fsdp2_equal_one_process(tiny_gpt2, prompts_file, tmp_path):
    two_processes_equal_one("grpo", tiny_gpt2, prompts_file, tmp_path, 29543, fsdp=True)


# ---------------------------------------------------------------- the verifiable reward


@pytest.mark.parametrize("response,answer", [
    (" 19", "19"), ("19.", "19"), ("19.0", "19"), (" +19 apples", "19"), ("#### 1,900", "1900"),
    ("so the answer is -8", "-8"), ("\\boxed{0.50}", ".5"), ("-0", "0"), (" Paris.", "paris"),
])
def test_exact_answer_normalises_as_users_expect(response, answer):
    assert exact_answer([""], [response], [{"answer": answer}]) == [1.0]
    assert normalise_answer(final_answer(response)) == normalise_answer(answer)


@pytest.mark.parametrize("response,answer", [(" 18", "19"), ("190", "19"), ("", "19"), ("nineteen", "19")])
def test_exact_answer_rejects_wrong_answers(response, answer):
    assert exact_answer([""], [response], [{"answer": answer}]) == [0.0]


def test_arithmetic_task_is_seeded_and_correct():
    task = arithmetic_task(50, seed=3)
    assert task == arithmetic_task(50, seed=3) and task != arithmetic_task(50, seed=4)
    for p in task:
        a, op, b, eq = p.text.split()
        assert eq == "=" and int(p.meta["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))
    answers = [" " + p.meta["answer"] for p in task]
    assert call_reward(exact_answer, [p.text for p in task], answers, meta=[p.meta for p in task]) == [1.0] * 50


def test_grpo_on_the_arithmetic_task_with_a_verifiable_and_a_format_reward(tiny_gpt2, tmp_path):
    task = tmp_path / "arith.jsonl"
    task.write_text("".join(p.model_dump_json() + "\n" for p in arithmetic_task(8, seed=0)))
    # The prompt's meta reaches the reward: an "oracle" policy output is simulated by a reward
    # that checks it received the right answers for the prompts it was given.
    seen = []

    def oracle(prompts, responses, meta):
        seen.extend((p, m["answer"]) for p, m in zip(prompts, meta))
        return exact_answer(prompts, [" " + m["answer"] for m in meta], meta)

    out = run_grpo(small(GRPOConfig, tiny_gpt2, tmp_path / "run", task, iterations=1), reward_fn=oracle)
    assert seen and all(eval(p.rstrip("=")) == int(a) for p, a in seen)
    assert rows(out)[0]["objective/reward"] == 1.0 and rows(out)[0]["grpo/tied_groups"] == 1.0
    # the real thing, from the CLI: exact_answer plus the length reward, weighted, each logged
    r = cli(["grpo", "--policy", str(tiny_gpt2), "--prompts", str(task), "--output", str(tmp_path / "cli"),
             "--reward", "rankloop.rl.rewards:exact_answer", "--reward", "rankloop.rl.rewards:length",
             "--reward-weight", "1", "--reward-weight", "0.1", "--iterations", "1", "--batch-size", "4", "-k", "4",
             "--minibatch-size", "8", "--max-new-tokens", "4", "--no-progress"])
    assert r.returncode == 0, r.stderr
    row = rows(tmp_path / "cli")[0]
    assert row["objective/reward"] == pytest.approx(row["objective/reward/exact_answer"]
                                                    + 0.1 * row["objective/reward/length"], abs=1e-6)


def test_verifiable_reward_without_an_answer_fails_before_sampling(tiny_gpt2, tmp_path):
    task = tmp_path / "arith.jsonl"
    prompts = arithmetic_task(4)
    prompts[2].meta.pop("answer")
    task.write_text("".join(p.model_dump_json() + "\n" for p in prompts))
    with pytest.raises(RewardError, match=r"needs meta\['answer'\] on every prompt; 1 of 4 prompts lack it "
                                          r"\(first: id 'arith-2'\)"):
        run_grpo(small(GRPOConfig, tiny_gpt2, tmp_path / "run", task, reward="rankloop.rl.rewards:exact_answer"))
    assert not (tmp_path / "run").exists()  # nothing was sampled, nothing written
    r = cli(["grpo", "--policy", str(tiny_gpt2), "--prompts", str(task), "--output", str(tmp_path / "cli"),
             "--reward", "rankloop.rl.rewards:exact_answer", "--iterations", "1", "--batch-size", "4",
             "--minibatch-size", "8", "--no-progress"])
    assert r.returncode == 2 and "arith-2" in r.stderr
