"""train-dpo: the K-way batch against the expanded pairs, the CLI, the reference cache, bad input,
and the runtime's invariants (grad accumulation, SIGKILL + resume, 2 processes)."""

import json
import os
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rankloop.config import ConfigError
from rankloop.dpo.config import DPOConfig
from rankloop.dpo.train import (REFERENCE_CACHE, ResponseLogps, as_ranking_matrix, dpo_collate, encode_rankings,
                                micro_step, train_dpo)
from rankloop.io import DataError, read_preferences, write_rankings
from rankloop.models import load_causal_lm, load_tokenizer
from rankloop.testing import build_tiny
from rankloop.records import CandidateText, RankedExample, Ranking
from rankloop.testing import synthetic_rankings
from rankloop.runtime import split_batch
from reward.conftest import ROOT, max_diff, moved, run_cli, weights

PACK = {"causal": True, "share_prefix": True, "hidden_size": 32}


def _cfg(data, model, out, **kw) -> DPOConfig:
    base = dict(data=str(data), model=str(model), output=str(out), lr=3e-3, batch_size=4, progress=False,
                log_every=1, kl_prompts=4, kl_max_new_tokens=8)
    return DPOConfig(**{**base, **kw})


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- the K-way batch ≡ its pairs


def _one_by_one_logp(lm, ids: list[int], start: int) -> torch.Tensor:
    logits = lm(torch.tensor([ids])).logits[0, :-1]  # (T − 1, V): position t predicts t + 1
    lp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    return lp[start - 1:].sum()


@pytest.mark.parametrize("pack", [PACK, None], ids=["tree", "padded"])
def test_k_way_batch_equals_expanded_pairs_one_by_one(tiny_gpt2, rank_data, pack):
    """One tree forward per ranking + all C(K,2) pair losses ≡ every pair's two sequences forwarded on
    their own, TRL-style (loss and gradients to 1e-5)."""
    tok = load_tokenizer(tiny_gpt2)
    enc = encode_rankings(read_preferences(rank_data["train"])[:3], tok, 64)
    beta = 0.5
    ref_lm = load_causal_lm(tiny_gpt2, tokenizer=tok)
    torch.manual_seed(0)
    with torch.no_grad():  # a reference that differs from the policy, so the implicit rewards are not 0
        for p in ref_lm.parameters():
            p.add_(0.02 * torch.randn_like(p))
        ref = [[_one_by_one_logp(ref_lm, x, s) for x, s in zip(e.ids, e.starts)] for e in enc]

    model = load_causal_lm(tiny_gpt2, tokenizer=tok)
    b = dpo_collate(enc, [0, 1, 2], tok.pad_token_id, True, pack)
    assert (b.rank.packed is not None) == (pack is not None)
    logp = as_ranking_matrix(ResponseLogps(model)(b), b.rank)  # (B, K)
    ref_m = torch.zeros_like(logp)
    for i, r in enumerate(ref):
        ref_m[i, :len(r)] = torch.stack(r)
    from rankloop.dpo.loss import dpo_loss

    loss_k = dpo_loss(logp, ref_m, b.rank.ranks, b.rank.mask, beta).mean()
    loss_k.backward()
    grads_k = {n: p.grad.clone() for n, p in model.named_parameters()}

    model2 = load_causal_lm(tiny_gpt2, tokenizer=tok)
    per_ranking = []
    for e, r in zip(enc, ref):
        losses = []
        for i, j in combinations(range(len(e.ids)), 2):
            if e.ranks[i] == e.ranks[j]:
                continue
            w, lo = (i, j) if e.ranks[i] < e.ranks[j] else (j, i)
            hw = beta * (_one_by_one_logp(model2, e.ids[w], e.starts[w]) - r[w])
            hl = beta * (_one_by_one_logp(model2, e.ids[lo], e.starts[lo]) - r[lo])
            losses.append(-F.logsigmoid(hw - hl))
        per_ranking.append(torch.stack(losses).mean())
    loss_p = torch.stack(per_ranking).mean()
    loss_p.backward()
    assert loss_k.item() == pytest.approx(loss_p.item(), abs=1e-5)
    for n, p in model2.named_parameters():
        assert torch.allclose(grads_k[n], p.grad, atol=1e-5), n


def test_encoding_keeps_the_prompt_once_and_the_response_start(tiny_gpt2):
    tok = load_tokenizer(tiny_gpt2)
    ex = synthetic_rankings(1, k=3, seed=0)[0]
    enc = encode_rankings([ex], tok, 64)[0]
    p = tok(ex.prompt)["input_ids"]
    assert all(x[:s] == p and x[-1] == tok.eos_token_id for x, s in zip(enc.ids, enc.starts))
    short = encode_rankings([ex], tok, 8)[0]  # the response keeps its start, the prompt its end
    assert all(len(x) <= 8 and s >= 1 and x[:s] == p[-s:] for x, s in zip(short.ids, short.starts))


# ---------------------------------------------------------------- the CLI, metrics, the cache


def test_train_dpo_cli_moves_the_policy_and_reports(tmp_path, tiny_gpt2, rank_data):
    out = tmp_path / "dpo"
    proc = run_cli("train-dpo", "--data", rank_data["train"], "--model", tiny_gpt2, "--output", out,
                   "--eval-data", rank_data["eval"], "--lr", "3e-3", "--batch-size", "4", "--epochs", "2",
                   "--beta", "0.1", "--no-progress")
    assert moved(weights(tiny_gpt2), weights(out)) > 1e-3
    load_causal_lm(out)
    log = _log(out)
    train_rows = [r for r in log if "loss" in r]
    assert {"reward/accuracy", "reward/margin", "logps/chosen", "logps/rejected", "grad_norm"} <= train_rows[0].keys()
    ev = [r for r in log if "eval/pairwise_accuracy" in r][-1]
    assert ev["eval/pairwise_accuracy"] > 0.7 and ev["eval/kl_ref"] > 0  # learned the rule; moved off π_ref
    assert "log-prob of the chosen responses" in proc.stderr
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["tied_only"] == 0 and summary["rankings"] == 48 and "logps_chosen" in summary["eval"]
    assert (out / REFERENCE_CACHE).exists()


def test_reference_logps_cached_reused_and_invalidated(tmp_path, tiny_gpt2, rank_data, capfd):
    out = tmp_path / "run"
    train_dpo(_cfg(rank_data["train"], tiny_gpt2, out, max_steps=2))
    cache = out / REFERENCE_CACHE
    first = cache.stat().st_mtime_ns
    train_dpo(_cfg(rank_data["train"], tiny_gpt2, out, max_steps=2))
    assert "reusing" in capfd.readouterr().err and cache.stat().st_mtime_ns == first
    train_dpo(_cfg(rank_data["eval"], tiny_gpt2, out, max_steps=2))  # another dataset
    assert "recomputing" in capfd.readouterr().err
    other = build_tiny(tmp_path / "other-ref", "gpt2", "causal", seed=1)  # same tokenizer, other weights
    train_dpo(_cfg(rank_data["eval"], tiny_gpt2, out, max_steps=2, reference=str(other)))
    assert "recomputing" in capfd.readouterr().err
    # The cached numbers are the reference's log-probs: the policy at step 0 is the reference.
    saved = torch.load(cache, weights_only=False)
    tok = load_tokenizer(other)
    enc = encode_rankings(read_preferences(rank_data["eval"])[:2], tok, 512)
    lm = load_causal_lm(other, tokenizer=tok)
    with torch.no_grad():
        want = [_one_by_one_logp(lm, x, s) for x, s in zip(enc[1].ids, enc[1].starts)]
    assert torch.allclose(saved["train"][1], torch.stack(want), atol=1e-4)


def test_lora_freeze_pl_ipo(tmp_path, tiny_llama, rank_data):
    for loss in ("pl", "ipo"):
        out = train_dpo(_cfg(rank_data["train"], tiny_llama, tmp_path / loss, max_steps=4, lora=True,
                             freeze_layers=1, loss=loss, eval_data=str(rank_data["eval"])))
        s = json.loads((out / "train_summary.json").read_text())
        assert 0 < s["trainable_parameters"] < s["parameters"]
        assert s["eval"]["kl_ref"] >= 0  # the reference is the policy with its adapter off
        assert moved(weights(tiny_llama), weights(out)) > 0
        layer0 = [k for k in weights(out) if ".layers.0." in k]
        assert layer0 and max_diff({k: weights(tiny_llama)[k] for k in layer0}, {k: weights(out)[k] for k in layer0}) == 0


# ---------------------------------------------------------------- bad input


def test_bad_input(tmp_path, tiny_gpt2, rank_data):
    proc = run_cli("train-dpo", "--data", rank_data["train"], "--model", tiny_gpt2, "--output", tmp_path / "b",
                   "--beta", "0", check=False)
    assert proc.returncode == 2 and "beta" in proc.stderr and "greater than 0" in proc.stderr
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOConfig(data="d", model="m", output="o", loss="pl", label_smoothing=0.1)

    other_tok = tmp_path / "other-tok"  # a reference whose vocabulary differs
    from rankloop.models import train_tokenizer
    from transformers import AutoModelForCausalLM

    tok = train_tokenizer(["completely different words here"] * 4, vocab_size=300, save_dir=other_tok)
    from rankloop.models import tiny_config

    AutoModelForCausalLM.from_config(tiny_config("gpt2", vocab_size=len(tok))).save_pretrained(other_tok)
    with pytest.raises(ConfigError, match="another tokenizer than the policy"):
        train_dpo(_cfg(rank_data["train"], tiny_gpt2, tmp_path / "t", max_steps=1, reference=str(other_tok)))

    bad = tmp_path / "bad.jsonl"
    bad.write_text(rank_data["train"].read_text().splitlines()[0] + "\n{not json\n")
    proc = run_cli("train-dpo", "--data", bad, "--model", tiny_gpt2, "--output", tmp_path / "c", check=False)
    assert proc.returncode == 2 and "bad.jsonl:2" in proc.stderr and "--skip-invalid" in proc.stderr


def _tied(n: int) -> list[RankedExample]:
    return [RankedExample(prompt_id=f"t{i}", prompt="say something nice.",
                          candidates=[CandidateText(id="a", text=" good."), CandidateText(id="b", text=" sad.")],
                          ranking=Ranking(prompt_id=f"t{i}", order=[["a", "b"]])) for i in range(n)]


def test_tied_only_rankings_are_left_out_counted_and_reported(tmp_path, tiny_gpt2, capfd):
    from rankloop.reward.config import RewardTrainConfig
    from rankloop.reward.train import train_reward_model

    data = tmp_path / "mixed.jsonl"
    write_rankings(data, synthetic_rankings(16, k=3, seed=0) + _tied(5))
    out = train_dpo(_cfg(data, tiny_gpt2, tmp_path / "dpo", max_steps=2))
    assert json.loads((out / "train_summary.json").read_text())["tied_only"] == 5
    assert "left out 5 of 21 rankings" in capfd.readouterr().err
    # train-rm the same (the two trainers read through one loader).
    rm = train_reward_model(RewardTrainConfig(data=str(data), model=str(tiny_gpt2), output=str(tmp_path / "rm"),
                                              max_steps=2, batch_size=4, normalise_on="none", progress=False))
    s = json.loads((rm / "train_summary.json").read_text())
    assert s["tied_only"] == 5 and s["rankings"] == 16
    only = tmp_path / "tied.jsonl"
    write_rankings(only, _tied(3))
    with pytest.raises(DataError, match="one tie group"):
        train_dpo(_cfg(only, tiny_gpt2, tmp_path / "none", max_steps=1))


# ---------------------------------------------------------------- invariants


def test_gradient_accumulation_equals_bigger_batch(tmp_path, tiny_gpt2, rank_data):
    from accelerate import Accelerator

    from rankloop.dpo.train import ReferenceLogps, dataset_logps
    from rankloop.reward.train import RewardData

    tok = load_tokenizer(tiny_gpt2)
    enc = encode_rankings(read_preferences(rank_data["train"]), tok, 64)
    data = RewardData(tok, enc, None, 64, 0)
    ref = ReferenceLogps(dataset_logps(ResponseLogps(load_causal_lm(tiny_gpt2, tokenizer=tok)), enc,
                                       tok.pad_token_id, PACK, 16), None)
    cfg = _cfg("d", tiny_gpt2, "o")
    acc = Accelerator(cpu=True)
    batch = list(range(8))
    grads = []
    for parts in ([batch], split_batch(batch, 4)):
        model = load_causal_lm(tiny_gpt2, tokenizer=tok)
        sums = sum(micro_step(ResponseLogps(model), acc, data, ref, p, len(batch), cfg, PACK) for p in parts)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert sums[1].item() == 8
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5), n

    big = train_dpo(_cfg(rank_data["train"], tiny_gpt2, tmp_path / "big", max_steps=3, batch_size=8))
    accum = train_dpo(_cfg(rank_data["train"], tiny_gpt2, tmp_path / "acc", max_steps=3, batch_size=2, grad_accum=4))
    assert max_diff(weights(big), weights(accum)) < 3e-4  # Adam's amplification of rounding (see train-rm's test)
    assert moved(weights(tiny_gpt2), weights(big)) > 5e-3
    a, b = _log(big)[0], _log(accum)[0]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_gpt2, rank_data):
    args = ["--lr", "3e-3", "--batch-size", "4", "--max-steps", "30", "--save-every", "4", "--no-progress"]
    ref = tmp_path / "ref"
    run_cli("train-dpo", "--data", rank_data["train"], "--model", tiny_gpt2, "--output", ref, *args)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rankloop.cli", "train-dpo", "--data", str(rank_data["train"]), "--model",
           str(tiny_gpt2), "--output", str(out), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not (out / "checkpoints" / "step-00000008").exists():
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before the kill"
    load_causal_lm(sorted((out / "checkpoints").glob("step-*"))[-1])  # the last complete checkpoint loads

    resumed = run_cli("train-dpo", *cmd[4:], "--resume")
    assert "reusing" in resumed.stderr  # the reference log-probs of the killed run
    assert max_diff(weights(ref), weights(out)) < 1e-6
    steps = [r["step"] for r in _log(out)]
    assert steps == sorted(steps) and steps[-1] == 30 and len(steps) == len(set(steps))


@pytest.mark.slow
def test_two_processes_data_parallel_equal_one(tmp_path, tiny_gpt2, rank_data):
    cfg = tmp_path / "log.yaml"
    cfg.write_text("log_every: 1\n")
    common = ["--data", rank_data["train"], "--model", tiny_gpt2, "--lr", "3e-3", "--max-steps", "4",
              "--no-progress", "--config", cfg]
    one = tmp_path / "one"
    run_cli("train-dpo", *common, "--output", one, "--batch-size", "4")
    two = tmp_path / "two"
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc_per_node", "2", "--master_port", "29519",
         "-m", "rankloop.cli", "train-dpo", *map(str, common), "--output", str(two), "--batch-size", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stderr
    for a, b in zip(_log(one), _log(two)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["reward/accuracy"] == b["reward/accuracy"]
    assert _log(one)[0]["grad_norm"] == pytest.approx(_log(two)[0]["grad_norm"], rel=1e-5)
    assert max_diff(weights(one), weights(two)) < 3e-4
    assert moved(weights(tiny_gpt2), weights(one)) > 1e-3
