"""The generator interface: what the PPO/RLOO/GRPO rollout and ``rankloop sample`` ask of whatever
turns prompts into responses.

The contract (``Generator``), tested on every implementation by ``tests/test_generate.py``:

- **prompts → tokens.** ``generate(prompts, params)`` returns a ``SampleBatch`` of
  N = len(prompts) × ``params.k`` rows, prompt-major (the k rows of a prompt are adjacent): left-padded
  prompt ids/mask (N, P), right-padded response ids/mask (N, R), ``finished`` (N,), decoded ``texts``.
- **log-probs at the sampling temperature.** With ``params.logprobs`` the batch carries
  ``logprobs`` (N, R): log softmax(logits / T)[token] of the policy itself — before top-k/top-p
  filtering and the ``min_new_tokens`` stop mask, so they equal a teacher-forced pass of the same
  weights at temperature T (0 on response padding). PPO's ``old_logprobs: sampler`` uses them as
  π_old (Schulman et al. 2017, eq. 6's denominator); the built-in also returns entropy and the last
  hidden state (for the value head), which other engines may leave ``None``.
- **stop handling.** A row ends at the first of ``params.stop_token_ids`` (default: the model's
  generation-config EOS ids); the stop token is kept in the response and masked 1, everything after
  it is masked 0 and set to the pad id; ``finished`` says whether the row stopped (not cut at
  ``max_new_tokens``).
- **seeds.** The same ``seed`` (or ``row_seeds``) and model give the same tokens; different seeds
  give different ones. ``row_seeds`` (one per row) make a row's sample independent of the batch it
  is decoded in, so data-parallel and resumed runs sample what a single uninterrupted one does.

``KVCacheGenerator`` — the batched KV-cache decode loop of ``rankloop.sampling.generate`` over the
live training model — is the one implementation. An external engine (vLLM, SGLang) would also have
to receive the policy's weights after every update; no such adapter ships because none is tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rankloop.sampling import SampleBatch


@dataclass(frozen=True)
class SamplingParams:
    """What to sample: one value per field for the whole call (see the module docstring)."""

    k: int = 1  # responses per prompt
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # stop tokens are masked out before this many tokens
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    stop_token_ids: tuple[int, ...] | None = None  # None: the model's EOS id(s)
    seed: int | None = None  # one stream for the call
    row_seeds: tuple[int, ...] | None = None  # one stream per row (len = len(prompts) * k)
    max_prompt_tokens: int | None = None
    truncate_prompts: bool = False
    logprobs: bool = False  # also return the policy's log-probs at ``temperature``


@runtime_checkable
class Generator(Protocol):
    """Prompts (already rendered as text) → a ``SampleBatch`` honouring ``params``."""

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> SampleBatch: ...


class KVCacheGenerator:
    """The built-in sampler (``rankloop.sampling.generate``) on a Hugging Face causal LM: decodes
    with the model as it is now, so a trainer needs no weight sync between updates. ``batch_size``
    rows are decoded together (chunks are padded separately)."""

    def __init__(self, model, tokenizer, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> SampleBatch:
        from rankloop.sampling import generate

        return generate(self.model, self.tokenizer, prompts, k=params.k, max_new_tokens=params.max_new_tokens,
                        min_new_tokens=params.min_new_tokens, temperature=params.temperature, top_p=params.top_p,
                        top_k=params.top_k, stop_token_ids=params.stop_token_ids, seed=params.seed,
                        batch_size=self.batch_size, max_prompt_tokens=params.max_prompt_tokens,
                        truncate_prompts=params.truncate_prompts, row_seeds=params.row_seeds,
                        policy_stats=params.logprobs)
