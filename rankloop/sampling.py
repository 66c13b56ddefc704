"""Sampling: the one place that turns prompts into responses.

``generate`` runs a batched decode loop over any Hugging Face causal LM with a KV cache
(``transformers.DynamicCache``), left padding and explicit position ids, so a batch of prompts
of different lengths decodes exactly as each prompt would alone. Per step it applies temperature,
top-k and top-p (nucleus, Holtzman et al. 2020) and samples from a seeded ``torch.Generator``, so
the same seed, batch size and model give the same tokens. A row stops at the first of
``stop_token_ids`` (several are allowed: stories260K ends a story with BOS, not EOS); the loop
stops when every row has stopped.

Why our own loop rather than ``model.generate``: the PPO rollout needs the response tokens, their
mask and whether each row reached a stop token, laid out exactly as the loss expects; and with
small models on CPU the per-step overhead of ``generate``'s processor and stopping-criteria
machinery is a large share of the time (see ``bench/ppo_vs_trl.py`` for the measured speed).

``sample_candidates`` is what ``rankloop sample`` and the loop call: K candidates per prompt, as
``Candidate`` records for the labeling app.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rankloop.models import backbone_of, unwrap_model
from rankloop.ops import entropy_from_logits, logprobs_from_logits
from rankloop.records import Candidate, Prompt, RenderedPrompt, render_prompt


class PromptTooLongError(ValueError):
    """A prompt has more tokens than ``max_prompt_tokens`` and truncation was not asked for."""


@dataclass
class SampleBatch:
    """The result of ``generate`` for N = len(prompts) * k rows (prompt-major: k rows per prompt).

    Shapes: P = longest prompt (tokens), R = longest response (tokens).
    """

    prompt_ids: torch.Tensor  # (N, P) left-padded with the pad id
    prompt_mask: torch.Tensor  # (N, P) 1 on prompt tokens, 0 on left padding
    response_ids: torch.Tensor  # (N, R) right-padded with the pad id; includes the stop token
    response_mask: torch.Tensor  # (N, R) 1 on generated tokens up to and including the stop token
    finished: torch.Tensor  # (N,) bool: the row ended with a stop token (not cut at max_new_tokens)
    texts: list[str]  # decoded responses without the stop token and special tokens
    prompt_index: list[int]  # row → index into the prompts list
    pad_token_id: int = 0
    stats: dict = field(default_factory=dict)
    # With ``generate(..., policy_stats=True)``, the policy's own view of what it sampled, taken in the
    # decode loop (0 on response padding): the PPO rollout needs no second forward pass for them.
    logprobs: torch.Tensor | None = None  # (N, R) log softmax(logits / temperature)[token], before top-k/p
    entropy: torch.Tensor | None = None  # (N, R) entropy of softmax(logits / temperature)
    hidden: torch.Tensor | None = None  # (N, R, H) last hidden state at the position that predicted the token

    @property
    def input_ids(self) -> torch.Tensor:
        """(N, P + R) prompt and response, for the teacher-forced forward pass."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(N, P + R)."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1)

    @property
    def num_tokens(self) -> int:
        return int(self.response_mask.sum())


def default_stop_ids(model, tokenizer) -> list[int]:
    """The model's ``generation_config.eos_token_id`` (an int or a list), else the tokenizer's EOS."""
    ids: list[int] = []
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None) if gc is not None else None
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if isinstance(eos, int):
        ids = [eos]
    elif eos is not None:
        ids = [int(e) for e in eos]
    return ids


def prompt_text(prompt: Prompt | str, tokenizer) -> str:
    """Plain text for a prompt: chat messages through the tokenizer's chat template when it has
    one, else rendered HH-style (``render_prompt``). A ``Prompt`` comes back as a ``RenderedPrompt``,
    a ``str`` that keeps the prompt's content, so a reward model given it renders the prompt its own
    way (as in training) rather than reading the policy's template."""
    if isinstance(prompt, str):
        return prompt
    if prompt.messages is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
    else:
        text = render_prompt(prompt.content)
    return RenderedPrompt(text, prompt.content)


def encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_tokens: int | None = None,
                   truncate_prompts: bool = False) -> list[list[int]]:
    """Token ids per prompt. Over-long prompts raise ``PromptTooLongError`` unless
    ``truncate_prompts``, which keeps the end of the prompt (nearest the response)."""
    ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    if max_prompt_tokens is not None:
        for i, row in enumerate(ids):
            if len(row) > max_prompt_tokens:
                if not truncate_prompts:
                    raise PromptTooLongError(
                        f"prompt {i} has {len(row)} tokens, more than max_prompt_tokens={max_prompt_tokens}; "
                        "shorten it, raise the limit, or pass truncate_prompts / --truncate-prompts "
                        "to keep its last tokens")
                ids[i] = row[-max_prompt_tokens:]
    for i, row in enumerate(ids):
        if not row:
            raise ValueError(f"prompt {i} encodes to no tokens (the tokenizer adds no BOS); give it some text")
    return ids


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, P) ids and mask, left-padded."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding gets 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering; filtered entries become -inf.

    logits: (N, V). ``top_k = 0`` and ``top_p = 1`` switch those filters off.
    """
    if temperature != 1.0:
        logits = logits / temperature
    if top_k and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Remove a token when the mass before it already reaches top_p (the first token always stays).
        remove_sorted = (probs.cumsum(-1) - probs) >= top_p
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def cache_argument(module) -> str:
    """The name under which ``module.forward`` takes the KV cache: ``cache`` in current transformers
    (``past_key_values`` is deprecated there, to be removed in 5.40), ``past_key_values`` in the
    releases before the rename and in models that have not been renamed."""
    params = inspect.signature(unwrap_model(module).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _Stepper:
    """One decode step of a causal LM with a KV cache: (n, L) new tokens → (n, V) logits at the last one.

    With ``keep_hidden`` it runs the backbone and the LM head separately, so the last hidden state
    (the input of a value head) is at hand; otherwise it calls the model with ``logits_to_keep=1``.
    """

    def __init__(self, model, keep_hidden: bool):
        from transformers import DynamicCache

        self.model, self.keep_hidden = model, keep_hidden
        self.cache = DynamicCache(config=model.config)
        self.hidden: torch.Tensor | None = None  # (n, H) after a step with keep_hidden
        if keep_hidden:
            self.backbone = backbone_of(model)
            self.head = unwrap_model(model).get_output_embeddings()
        self.cache_arg = cache_argument(self.backbone if keep_hidden else model)

    def __call__(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        kw = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
              self.cache_arg: self.cache, "use_cache": True}
        if not self.keep_hidden:
            return self.model(**kw, logits_to_keep=1).logits[:, -1, :]
        self.hidden = self.backbone(**kw).last_hidden_state[:, -1, :]
        return self.head(self.hidden)


@torch.inference_mode()
def _generate_chunk(model, ids: torch.Tensor, mask: torch.Tensor, *, max_new_tokens: int, min_new_tokens: int,
                    temperature: float, top_p: float, top_k: int, stop: torch.Tensor, pad_id: int,
                    gen: torch.Generator | None, row_gens: list[torch.Generator] | None = None,
                    policy_stats: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Decode one chunk. Returns (response_ids (n, R), finished (n,), stats); stats holds
    ``logprobs``/``entropy`` (n, R) and ``hidden`` (n, R, H) when ``policy_stats``."""
    device = ids.device
    n = ids.size(0)
    step_fn = _Stepper(model, keep_hidden=policy_stats)
    P = ids.size(1)
    # One mask for the whole decode, sliced per step (no per-step concatenation).
    attn_full = torch.cat([mask, torch.ones((n, max_new_tokens), dtype=mask.dtype, device=device)], dim=1)
    pos = positions(mask)
    step_logits = step_fn(ids, mask, pos)
    next_pos = pos[:, -1:] + 1  # (n, 1)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    tokens: list[torch.Tensor] = []
    kept: dict[str, list[torch.Tensor]] = {"logprobs": [], "entropy": [], "hidden": []}
    for step in range(max_new_tokens):
        logits = step_logits.float()  # (n, V)
        if policy_stats:  # π itself at the sampling temperature (top-k/p and min_new_tokens not applied)
            scaled = logits / temperature if temperature not in (0, 1) else logits
            kept["entropy"].append(entropy_from_logits(scaled))
            kept["hidden"].append(step_fn.hidden.float())
        if not torch.isfinite(logits).all():
            bad = (~torch.isfinite(logits)).any(-1).nonzero().flatten().tolist()
            raise FloatingPointError(f"non-finite logits while sampling (step {step}, rows {bad[:8]})")
        if step < min_new_tokens and stop.numel():
            # Out of place: at T = 1 ``scaled`` is ``logits`` itself, and π's log-probs must not see the mask.
            logits = logits.index_fill(1, stop, float("-inf"))
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
            if row_gens is not None:
                # Exponential race (≡ Gumbel-max): argmax p_i / E_i with E_i ~ Exp(1) samples from p,
                # and each row's noise comes from its own stream, independent of the batch.
                noise = torch.stack([torch.empty(probs.size(1), device=device).exponential_(generator=g)
                                     for g in row_gens])
                nxt = (probs / noise).argmax(-1)
            else:
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)  # (n,)
        tokens.append(nxt)
        if policy_stats:
            kept["logprobs"].append(logprobs_from_logits(scaled, nxt))
        if stop.numel():
            done = done | torch.isin(nxt, stop)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        step_logits = step_fn(nxt[:, None], attn_full[:, :P + step + 1], next_pos)
        next_pos = next_pos + 1
    resp = torch.stack(tokens, dim=1) if tokens else torch.empty((n, 0), dtype=torch.long, device=device)
    stats = {k: torch.stack(v, dim=1) for k, v in kept.items() if v}
    return resp, done, stats


def response_mask_from(resp: torch.Tensor, stop: torch.Tensor) -> torch.Tensor:
    """(N, R) mask: 1 up to and including the first stop token, 0 after it."""
    if resp.numel() == 0:
        return torch.zeros_like(resp)
    is_stop = torch.isin(resp, stop) if stop.numel() else torch.zeros_like(resp, dtype=torch.bool)
    # A position is real when no stop token occurred strictly before it.
    before = is_stop.long().cumsum(1) - is_stop.long()
    return (before == 0).long()


def generate(model, tokenizer, prompts: Sequence[str], *, k: int = 1, max_new_tokens: int = 64,
             min_new_tokens: int = 0, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             stop_token_ids: Sequence[int] | None = None, seed: int | None = None, batch_size: int = 64,
             max_prompt_tokens: int | None = None, truncate_prompts: bool = False,
             generator: torch.Generator | None = None, row_seeds: Sequence[int] | None = None,
             policy_stats: bool = False) -> SampleBatch:
    """Sample ``k`` responses for every prompt (rows prompt-major: k adjacent rows per prompt).

    ``temperature = 0`` is greedy. ``stop_token_ids`` defaults to the model's generation-config
    EOS id(s). ``seed`` seeds a private generator (the global RNG is untouched); pass ``generator``
    instead to continue a stream across calls. ``row_seeds`` (one per row) gives every row its own
    random stream, so a row's sample does not depend on the batch it is in, the batch size or the
    number of processes (PPO uses this: resume and data-parallel runs sample the same tokens).
    ``max_prompt_tokens`` bounds prompt length (see ``encode_prompts``). Rows are decoded in chunks
    of ``batch_size``; chunks are padded separately, so a short prompt never waits on a long one
    from another chunk. ``policy_stats`` also returns, per response token, the policy's log-prob,
    entropy and last hidden state as computed in the decode loop (``SampleBatch.logprobs`` etc.).
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop_list = list(stop_token_ids) if stop_token_ids is not None else default_stop_ids(model, tokenizer)
    stop = torch.tensor(stop_list, dtype=torch.long, device=device)
    if generator is None and seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    encoded = encode_prompts(tokenizer, prompts, max_prompt_tokens, truncate_prompts)
    rows = [(i, encoded[i]) for i in range(len(prompts)) for _ in range(k)]
    if row_seeds is not None and len(row_seeds) != len(rows):
        raise ValueError(f"row_seeds has {len(row_seeds)} seeds for {len(rows)} rows")
    was_training = model.training
    model.eval()
    p_ids, p_masks, r_ids, dones, chunk_stats = [], [], [], [], []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids, mask = left_pad([r for _, r in chunk], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            row_gens = None
            if row_seeds is not None:
                row_gens = [torch.Generator(device=device) for _ in chunk]
                for g, s in zip(row_gens, row_seeds[start:start + batch_size]):
                    g.manual_seed(int(s))
            resp, done, st = _generate_chunk(model, ids, mask, max_new_tokens=max_new_tokens,
                                             min_new_tokens=min_new_tokens, temperature=temperature, top_p=top_p,
                                             top_k=top_k, stop=stop, pad_id=pad_id, gen=generator,
                                             row_gens=row_gens, policy_stats=policy_stats)
            p_ids.append(ids)
            p_masks.append(mask)
            r_ids.append(resp)
            dones.append(done)
            chunk_stats.append(st)
    finally:
        model.train(was_training)
    P = max(t.size(1) for t in p_ids)
    R = max(t.size(1) for t in r_ids)
    prompt_ids = torch.cat([torch.nn.functional.pad(t, (P - t.size(1), 0), value=pad_id) for t in p_ids])
    prompt_mask = torch.cat([torch.nn.functional.pad(t, (P - t.size(1), 0), value=0) for t in p_masks])
    response_ids = torch.cat([torch.nn.functional.pad(t, (0, R - t.size(1)), value=pad_id) for t in r_ids])
    finished = torch.cat(dones)
    response_mask = response_mask_from(response_ids, stop)
    response_ids = response_ids.masked_fill(response_mask == 0, pad_id)
    texts = decode_responses(tokenizer, response_ids, response_mask, stop, prompt_ids, prompt_mask)
    kept: dict[str, torch.Tensor] = {}
    if policy_stats:
        for name in ("logprobs", "entropy", "hidden"):
            padded = [torch.nn.functional.pad(st[name], (0, 0) * (st[name].dim() - 2) + (0, R - st[name].size(1)))
                      for st in chunk_stats]
            m = response_mask.to(padded[0].dtype)
            kept[name] = torch.cat(padded) * (m[..., None] if name == "hidden" else m)
    return SampleBatch(prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
                       response_mask=response_mask, finished=finished, texts=texts,
                       prompt_index=[i for i, _ in rows], pad_token_id=pad_id, **kept)


def decode_responses(tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor, stop: torch.Tensor,
                     prompt_ids: torch.Tensor | None = None, prompt_mask: torch.Tensor | None = None) -> list[str]:
    """Response texts without the stop token and special tokens.

    With the prompt given, a response is decoded as ``decode(prompt + response)`` minus
    ``decode(prompt)``: sentencepiece-style tokenizers drop the leading space of the first piece
    when a response is decoded alone ("because" + "he" instead of "because" + " he").
    """
    stop_set = set(stop.tolist()) if stop.numel() else set()
    texts = []
    for i, (row, m) in enumerate(zip(response_ids.tolist(), response_mask.tolist())):
        toks = [t for t, keep in zip(row, m) if keep]
        if toks and toks[-1] in stop_set:
            toks = toks[:-1]
        text = tokenizer.decode(toks, skip_special_tokens=True)
        if prompt_ids is not None and toks:
            p = [t for t, keep in zip(prompt_ids[i].tolist(), prompt_mask[i].tolist()) if keep]
            head = tokenizer.decode(p, skip_special_tokens=True)
            full = tokenizer.decode(p + toks, skip_special_tokens=True)
            if full.startswith(head):
                text = full[len(head):]
        texts.append(text)
    return texts


def sample_candidates(model_path: str | Path, prompts: list[Prompt], k: int, *, max_new_tokens: int = 64,
                      min_new_tokens: int = 1, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                      stop_token_ids: Sequence[int] | None = None, seed: int = 0, batch_size: int = 32,
                      policy_name: str | None = None, round: int = 0, dtype: str = "float32",
                      max_prompt_tokens: int | None = None, truncate_prompts: bool = False,
                      model=None, tokenizer=None, device: str | None = None) -> list[Candidate]:
    """K candidates per prompt as ``Candidate`` records (ids ``{prompt_id}-r{round}-{j}``).

    Responses that are empty after decoding cannot be labeled and are dropped with a warning;
    ``min_new_tokens = 1`` (the default) makes them rare. Pass ``model``/``tokenizer`` to reuse
    loaded ones (the loop does); ``device`` moves a model loaded here (default: CPU).
    """
    from rankloop.models import load_causal_lm, load_tokenizer

    if tokenizer is None:
        tokenizer = load_tokenizer(model_path, padding_side="left")
    if model is None:
        model = load_causal_lm(model_path, dtype=dtype, tokenizer=tokenizer)
        if device is not None:
            model = model.to(device)
    texts = [prompt_text(p, tokenizer) for p in prompts]
    from rankloop.generate import KVCacheGenerator, SamplingParams

    params = SamplingParams(k=k, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                            stop_token_ids=tuple(stop_token_ids) if stop_token_ids is not None else None,
                            max_prompt_tokens=max_prompt_tokens, truncate_prompts=truncate_prompts)
    batch = KVCacheGenerator(model, tokenizer, batch_size).generate(texts, params)
    name = policy_name or str(model_path)
    out: list[Candidate] = []
    dropped = 0
    lengths = batch.response_lengths.tolist()
    finished = batch.finished.tolist()
    for row, (pi, text) in enumerate(zip(batch.prompt_index, batch.texts)):
        j = row - pi * k
        if not text.strip():
            dropped += 1
            continue
        out.append(Candidate(id=f"{prompts[pi].id}-r{round}-{j}", prompt_id=prompts[pi].id, text=text, policy=name,
                             round=round, meta={"seed": seed, "temperature": temperature, "top_p": top_p,
                                                "top_k": top_k, "tokens": int(lengths[row]),
                                                "finished": bool(finished[row])}))
    if dropped:
        warnings.warn(f"dropped {dropped} empty candidate(s) of {len(batch.texts)}", stacklevel=2)
    return out
