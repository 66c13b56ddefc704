"""train-sft on real tiny models: smoke, the loss against transformers' own, and the invariants —
packed ≡ padded, gradient accumulation ≡ bigger batch, SIGKILL + resume ≡ uninterrupted,
2-process gloo ≡ 1 process — plus LoRA/freezing, guards, and PPO starting from the SFT model."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rankloop.config import ConfigError
from rankloop.models import load_causal_lm, load_tokenizer
from rankloop.testing import build_tiny
from rankloop.runtime import NonFiniteError
from rankloop.sft.config import SFTConfig
from rankloop.sft.data import encode_rows, read_demonstrations
from rankloop.sft.train import NextTokenLogits, collate, micro_step, train_sft

from .conftest import ROOT, max_diff, metrics, run_cli, weights, write_jsonl
from .test_data import CHATML, CONV


def _cfg(data, model, out, **kw):
    base = dict(data=str(data), model=str(model), output=str(out), lr=3e-3, batch_size=4, progress=False,
                log_every=1, tensorboard=False)
    return SFTConfig(**{**base, **kw})


def _encoded(path, tok, max_length=256):
    return encode_rows(read_demonstrations(path), tok, max_length, str(path))


# ---------------------------------------------------------------- smoke


def test_train_sft_cli_learns_saves_and_loads(tmp_path, tiny_gpt2, sft_data):
    out = tmp_path / "sft"
    run_cli("train-sft", "--data", sft_data["train"], "--model", tiny_gpt2, "--output", out, "--eval-data",
            sft_data["eval"], "--epochs", "3", "--batch-size", "8", "--lr", "3e-3", "--save-every", "5",
            "--eval-every", "6", "--log-every", "2", "--no-progress")
    before, after = weights(tiny_gpt2), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter moved"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)  # the output is a plain HF model directory
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000010", "step-00000015"]  # keep 2
    AutoModelForCausalLM.from_pretrained(ckpts[-1])
    rows = metrics(out)
    train = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train] == list(range(2, 19, 2))
    for k in ("loss", "sft/perplexity", "sft/trained_tokens", "sft/tokens", "sft/tokens_per_s", "lr", "grad_norm"):
        assert k in train[0] and math.isfinite(train[0][k]), k
    assert train[-1]["loss"] < train[0]["loss"] - 1.0
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [6, 12, 18]
    assert evals[-1]["eval/loss"] < evals[0]["eval/loss"]
    assert evals[-1]["eval/perplexity"] == pytest.approx(math.exp(evals[-1]["eval/loss"]))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 18 and summary["eval"]["loss"] == pytest.approx(evals[-1]["eval/loss"])
    assert json.loads((out / "train_config.json").read_text())["epochs"] == 3


def test_the_loss_is_transformers_own_with_the_prompt_labels_masked(tiny_gpt2, sft_data):
    """Our read-positions loss = HF's causal-LM loss with labels −100 on prompt and padding."""
    tok = load_tokenizer(tiny_gpt2)
    enc = _encoded(sft_data["train"], tok)[:6]
    lm = load_causal_lm(tiny_gpt2, tokenizer=tok)
    b = collate(enc, list(range(6)), tok.pad_token_id, pack=None)
    ours = NextTokenLogits(lm)(b.input_ids, b.attention_mask, b.position_ids, b.read_row, b.read_col)
    ours = torch.nn.functional.cross_entropy(ours, b.targets)
    labels = b.input_ids.clone()
    for i, e in enumerate(enc):
        labels[i, :len(e.ids)][~torch.tensor(e.trained)] = -100
    labels[b.attention_mask == 0] = -100
    theirs = lm(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=labels).loss
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_packed_equals_padded_in_loss_and_gradients(tmp_path_factory, sft_data, arch):
    model_dir = build_tiny(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
    tok = load_tokenizer(model_dir)
    enc = _encoded(sft_data["train"], tok)
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    idx = list(range(12))
    n = sum(enc[i].n_targets for i in idx)
    assert collate(enc, idx, tok.pad_token_id, pack=32).packed  # this batch does take the packed path
    out = {}
    for pack in (32, None):
        lm = load_causal_lm(model_dir, tokenizer=tok)
        sums = micro_step(NextTokenLogits(lm), acc, enc, idx, n, tok.pad_token_id, pack, torch.float32)
        out[pack] = (sums, {k: p.grad.clone() for k, p in lm.named_parameters()})
    assert out[32][0][0].item() == pytest.approx(out[None][0][0].item(), rel=1e-6)  # Σ nll
    assert out[32][0][1].item() == out[None][0][1].item() == n
    for k, g in out[None][1].items():
        assert torch.allclose(out[32][1][k], g, atol=1e-6, rtol=1e-4), k


def test_packed_training_follows_padded_training(tmp_path, tiny_gpt2, sft_data):
    runs = {p: train_sft(_cfg(sft_data["train"], tiny_gpt2, tmp_path / f"pack-{p}", max_steps=5, batch_size=8,
                              pack=p)) for p in (True, False)}
    losses = {p: [r["loss"] for r in metrics(o)] for p, o in runs.items()}
    assert len(losses[True]) == 5 and losses[True] == pytest.approx(losses[False], abs=1e-5)
    assert max_diff(weights(runs[True]), weights(runs[False])) < 1e-4


def test_gradient_accumulation_equals_bigger_batch(tmp_path, tiny_gpt2, sft_data):
    from accelerate import Accelerator

    tok = load_tokenizer(tiny_gpt2)
    enc = _encoded(sft_data["train"], tok)
    acc = Accelerator(cpu=True)
    batch = list(range(8))
    n = sum(enc[i].n_targets for i in batch)
    grads = []
    for parts in ([batch], [batch[i:i + 2] for i in range(0, 8, 2)]):
        lm = load_causal_lm(tiny_gpt2, tokenizer=tok)
        sums = sum(micro_step(NextTokenLogits(lm), acc, enc, p, n, tok.pad_token_id, 32, torch.float32) for p in parts)
        grads.append({k: p.grad.clone() for k, p in lm.named_parameters()})
    assert sums[1].item() == n
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5), k
    # End to end. Adam's first update is ≈ lr·sign(g): float rounding in a near-zero gradient shows
    # up as up to ~lr/10 in that weight, so the weights agree to a fraction of lr, not bit for bit.
    big = train_sft(_cfg(sft_data["train"], tiny_gpt2, tmp_path / "big", max_steps=3, batch_size=8))
    accum = train_sft(_cfg(sft_data["train"], tiny_gpt2, tmp_path / "acc", max_steps=3, batch_size=2, grad_accum=4))
    assert max_diff(weights(big), weights(accum)) < 3e-4
    a, b = metrics(big), metrics(accum)
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], abs=1e-6)
    assert a[0]["grad_norm"] == pytest.approx(b[0]["grad_norm"], rel=1e-5)
    assert a[0]["sft/trained_tokens"] == b[0]["sft/trained_tokens"]


def _cli_args(data, model, out, steps):
    return ["train-sft", "--data", str(data), "--model", str(model), "--output", str(out), "--lr", "3e-3",
            "--batch-size", "4", "--max-steps", str(steps), "--save-every", "4", "--log-every", "1", "--no-progress"]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_gpt2, sft_data):
    # Both runs as the same CLI process (one thread count: the same float rounding).
    ref = tmp_path / "ref"
    run_cli(*_cli_args(sft_data["train"], tiny_gpt2, ref, 24))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rankloop.cli", *_cli_args(sft_data["train"], tiny_gpt2, out, 24)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "checkpoints" / "step-00000008").exists():
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "the run finished before the kill"
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    load_causal_lm(last)  # the last complete checkpoint is intact and loadable

    run_cli(*_cli_args(sft_data["train"], tiny_gpt2, out, 24), "--resume")
    assert max_diff(weights(ref), weights(out)) == 0.0
    assert not list((out / "checkpoints").glob(".tmp-*"))
    steps = [r["step"] for r in metrics(out)]
    assert steps == list(range(1, 25))
    assert [r["loss"] for r in metrics(out)] == pytest.approx([r["loss"] for r in metrics(ref)], abs=1e-6)


def test_resume_refuses_another_config_and_a_fresh_run_refuses_old_checkpoints(tmp_path, tiny_gpt2, sft_data):
    out = tmp_path / "o"
    train_sft(_cfg(sft_data["train"], tiny_gpt2, out, max_steps=4, save_every=2))
    with pytest.raises(ConfigError, match=r"pass --resume to continue it"):
        train_sft(_cfg(sft_data["train"], tiny_gpt2, out, max_steps=4, save_every=2))
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in \['lr'\]"):
        train_sft(_cfg(sft_data["train"], tiny_gpt2, out, max_steps=4, save_every=2, lr=1e-3, resume=True))


@pytest.mark.slow
def test_two_processes_data_parallel_equal_one(tmp_path, tiny_gpt2, sft_data):
    common = ["--data", sft_data["train"], "--model", tiny_gpt2, "--lr", "3e-3", "--max-steps", "4",
              "--log-every", "1", "--no-progress", "--eval-data", sft_data["eval"]]
    one = tmp_path / "one"
    run_cli("train-sft", *common, "--output", one, "--batch-size", "8")
    two = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519",
         "-m", "rankloop.cli", "train-sft", *map(str, common), "--output", str(two), "--batch-size", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stderr
    m1, m2 = metrics(one), metrics(two)
    assert [r["step"] for r in m1] == [r["step"] for r in m2]
    for a, b in zip(m1, m2):
        for k in ("loss", "eval/loss"):
            if k in a:
                assert a[k] == pytest.approx(b[k], abs=1e-5), k
        if "sft/trained_tokens" in a:
            assert a["sft/trained_tokens"] == b["sft/trained_tokens"]
    assert m1[0]["grad_norm"] == pytest.approx(m2[0]["grad_norm"], rel=1e-5)
    assert max_diff(weights(one), weights(two)) < 3e-4


# ---------------------------------------------------------------- LoRA, freezing, conversations, guards


def test_lora_and_freezing(tmp_path, tiny_llama, sft_data):
    before = weights(tiny_llama)
    lora = train_sft(_cfg(sft_data["train"], tiny_llama, tmp_path / "lora", max_steps=4, lora=True, lora_r=4))
    after = weights(lora)
    assert after.keys() == before.keys()  # merged: a plain model, no adapter weights
    assert any(not torch.equal(before[k], after[k]) for k in before)
    frozen = train_sft(_cfg(sft_data["train"], tiny_llama, tmp_path / "frozen", max_steps=4, freeze_layers=1))
    after = weights(frozen)
    for k in before:
        same = torch.equal(before[k], after[k])
        if k.startswith("model.layers.0.") or k == "model.embed_tokens.weight":
            assert same, k
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("model.layers.1."))
    both = train_sft(_cfg(sft_data["train"], tiny_llama, tmp_path / "both", max_steps=4, lora=True, freeze_layers=1))
    after = weights(both)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("model.layers.0."))
    assert summary_trainable(both) < summary_trainable(frozen)


def summary_trainable(out) -> int:
    return json.loads((out / "train_summary.json").read_text())["trainable_parameters"]


def test_lora_resume_equals_uninterrupted(tmp_path, tiny_gpt2, sft_data):
    kw = dict(max_steps=6, save_every=3, lora=True)
    ref = train_sft(_cfg(sft_data["train"], tiny_gpt2, tmp_path / "ref", **kw))
    part = train_sft(_cfg(sft_data["train"], tiny_gpt2, tmp_path / "part", **{**kw, "max_steps": 6}))
    import shutil

    (part / "model.safetensors").unlink()
    shutil.rmtree(part / "checkpoints" / "step-00000006", ignore_errors=True)
    resumed = train_sft(_cfg(sft_data["train"], tiny_gpt2, part, resume=True, **kw))
    assert json.loads((resumed / "train_summary.json").read_text())["resumed_at"] == 3
    assert max_diff(weights(ref), weights(resumed)) < 1e-6


def test_conversations_train_with_the_models_template_and_save_it(tmp_path, tiny_gpt2):
    p = write_jsonl(tmp_path / "conv.jsonl", [{"messages": CONV}] * 8)
    out = train_sft(_cfg(p, tiny_gpt2, tmp_path / "o", max_steps=2, chat_template=CHATML))
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out)).chat_template == CHATML  # sampling and PPO render alike
    out2 = train_sft(_cfg(p, out, tmp_path / "o2", max_steps=1))  # the model's own template now
    assert metrics(out2)[0]["sft/trained_tokens"] == metrics(out)[0]["sft/trained_tokens"]


def test_non_finite_loss_stops_naming_the_step_and_the_last_checkpoint(tmp_path, tiny_gpt2, sft_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    bad = tmp_path / "nan"
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_gpt2))
    with torch.no_grad():
        lm.lm_head.weight[:] = math.nan
    lm.save_pretrained(str(bad))
    AutoTokenizer.from_pretrained(str(tiny_gpt2)).save_pretrained(str(bad))
    with pytest.raises(NonFiniteError, match=r"non-finite loss at step 1, step 'forward'.*none \(no checkpoint"):
        train_sft(_cfg(sft_data["train"], bad, tmp_path / "o", max_steps=2))
    proc = run_cli(*_cli_args(sft_data["train"], bad, tmp_path / "o2", 2), check=False)
    assert proc.returncode == 3 and "non-finite loss at step 1" in proc.stderr


def test_cli_bad_row_exit_code_and_hint(tmp_path, tiny_gpt2):
    p = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": " b"}, {"prompt": "a", "completion": ""}])
    proc = run_cli("train-sft", "--data", p, "--model", tiny_gpt2, "--output", tmp_path / "o", "--no-progress",
                   check=False)
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())  # (rich wraps long lines)
    assert "d.jsonl:2: the response is empty (pass --skip-invalid to skip and count bad rows)" in err


# ---------------------------------------------------------------- the SFT model as PPO's policy and reference


def test_sft_output_is_a_ppo_policy_and_its_kl_reference(tmp_path, tiny_gpt2, sft_data):
    from rankloop.rl.ppo import PPOConfig, run_ppo

    sft = train_sft(_cfg(sft_data["train"], tiny_gpt2, tmp_path / "sft", max_steps=6))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": f"p{i}", "text": t} for i, t in
                                                        enumerate(["tell me:", "a story:", "once upon a time", "the cat"])])
    out = run_ppo(PPOConfig(policy=str(sft), output=str(tmp_path / "ppo"), prompts=str(prompts),
                            reward="rankloop.rl.rewards:length", iterations=2, batch_size=4, minibatch_size=2,
                            ppo_epochs=1, max_new_tokens=6, learning_rate=1e-3, old_logprobs="forward",
                            progress=False, tensorboard=False))
    rows = metrics(out)
    assert rows[0]["ppo/kl_ref"] == 0.0  # π_ref = π^SFT: the first rollout's KL is exactly 0
    assert rows[1]["ppo/kl_ref"] > 0.0
    load_causal_lm(out)
