"""Pre-train the quickstart's small causal LM on the generated corpus, and cache it.

1. generate the corpus (``rankloop.corpus``);
2. train a byte-level BPE tokenizer on it with the ``tokenizers`` library (``models.train_tokenizer``);
3. build a small GPT-2-style model from a config and train it for a fixed number of steps
   (next-token loss on ``prompt + response + EOS``, AdamW, cosine schedule);
4. save model + tokenizer + ``pretrain_config.json`` to the cache directory
   ``$RANKLOOP_CACHE/pretrained/<hash of the config>`` (default ``~/.cache/rankloop``).

A second call with the same config returns the cached directory at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from pydantic import Field

from rankloop.config import Config


class PretrainConfig(Config):
    """How the quickstart's base model is made. The hash of these fields names the cache entry."""

    corpus_size: int = Field(30000, description="Number of generated prompt/response texts to train on.")
    corpus_seed: int = Field(0, description="Seed of the generated corpus.")
    vocab_size: int = Field(640, description="BPE vocabulary size of the tokenizer.")
    hidden: int = Field(128, description="Model width (n_embd).")
    layers: int = Field(4, description="Transformer blocks.")
    heads: int = Field(4, description="Attention heads.")
    max_positions: int = Field(160, description="Longest sequence (tokens) the model handles.")
    steps: int = Field(600, description="Optimizer steps.")
    batch_size: int = Field(32, description="Rows of packed tokens per step.")
    block_size: int = Field(64, description="Tokens per packed row (documents are joined by EOS).")
    lr: float = Field(3e-3, description="Peak learning rate (AdamW, linear warm-up then cosine decay).")
    warmup: int = Field(50, description="Warm-up steps.")
    seed: int = Field(0, description="Seed for initialisation and batch order.")
    threads: int | None = Field(None, description="torch threads (None: torch's default).")

    def key(self) -> str:
        d = self.model_dump(exclude={"threads"})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


TINY_PRETRAIN = dict(corpus_size=6000, vocab_size=512, hidden=64, layers=2, heads=2, steps=300, batch_size=32,
                     lr=4e-3)


def cache_root() -> Path:
    return Path(os.environ.get("RANKLOOP_CACHE", Path.home() / ".cache" / "rankloop"))


def pretrained_dir(cfg: PretrainConfig) -> Path:
    return cache_root() / "pretrained" / cfg.key()


def pretrain(cfg: PretrainConfig, force: bool = False, progress: bool = True) -> Path:
    """The cached pre-trained model directory for ``cfg``, training it first if needed."""
    out = pretrained_dir(cfg)
    if (out / "DONE").exists() and not force:
        return out

    import torch
    from transformers import AutoModelForCausalLM

    from rankloop.config import save_config
    from rankloop.corpus import generate_corpus
    from rankloop.models import adamw, tiny_config, train_tokenizer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    # 1. corpus
    corpus = generate_corpus(cfg.corpus_size, seed=cfg.corpus_seed)
    texts = [e.prompt + e.response for e in corpus]
    # 2. tokenizer
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(texts, vocab_size=cfg.vocab_size)
    ids = tok(texts, add_special_tokens=True)["input_ids"]
    # Packed blocks (GPT-2 style): documents joined by EOS, cut into fixed-length rows, no padding.
    stream = torch.tensor([t for x in ids for t in x + [tok.eos_token_id]])
    n_blocks = len(stream) // cfg.block_size
    blocks = stream[: n_blocks * cfg.block_size].view(n_blocks, cfg.block_size)
    # 3. model
    torch.manual_seed(cfg.seed)
    mcfg = tiny_config("gpt2", vocab_size=len(tok), hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads,
                       max_positions=cfg.max_positions, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = AutoModelForCausalLM.from_config(mcfg)
    model.train()
    opt = adamw(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(frac * 3.14159265)).item()))

    gen = torch.Generator().manual_seed(cfg.seed)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    losses: list[float] = []
    with Progress(TextColumn("pre-train"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
                  TimeRemainingColumn(), disable=not progress, transient=True) as bar:
        task = bar.add_task("pretrain", total=cfg.steps, loss="-")
        for step in range(cfg.steps):
            idx = torch.randint(n_blocks, (cfg.batch_size,), generator=gen)
            input_ids = blocks[idx]  # (B, T)
            labels = input_ids
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = model(input_ids=input_ids, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            bar.update(task, advance=1, loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
    # 4. save, atomically: the directory appears complete or not at all
    model.eval()
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    save_config(cfg, tmp / "pretrain_config.json")
    n_params = sum(p.numel() for p in model.parameters())
    (tmp / "pretrain_metrics.json").write_text(json.dumps(
        {"final_loss": sum(losses[-50:]) / len(losses[-50:]), "seconds": time.perf_counter() - t0,
         "parameters": n_params, "tokens_seen": cfg.steps * cfg.batch_size * cfg.block_size}, indent=2))
    (tmp / "DONE").write_text("ok\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out
