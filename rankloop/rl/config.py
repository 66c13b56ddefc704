"""``PPOConfig``: every setting of ``rankloop ppo`` (and of the loop's PPO stage), documented.

Kept apart from the training loop (``rankloop.rl.ppo``) so the CLI can build its flags from it
without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rankloop.config import Config


class PPOConfig(Config):
    """Every knob of ``rankloop ppo``. Loss functions take plain numbers from here, never the config."""

    # --- inputs and outputs
    policy: str = Field(description="Initial policy: a Hugging Face model id or a local path.")
    reference: str | None = Field(None, description="The frozen reference π_ref of the KL penalty (same tokenizer "
                                  "as the policy). Default: the initial policy. In later rounds of the loop this "
                                  "is the original model, so the KL stays anchored to it (InstructGPT's π^SFT).")
    reward: str | None = Field(None, description="A rankloop reward-model directory, or 'module:function' / "
                               "'file.py:function' scoring (prompts, responses) -> list[float]. "
                               "Not needed when run_ppo is given a reward function.")
    prompts: str | None = Field(None, description="Prompts JSONL (rankloop's prompt format).")
    output: str = Field(description="Output directory: final policy, value head, metrics, checkpoints.")

    # --- run length and data
    iterations: int = Field(10, ge=1, description="PPO iterations (rollout + update).")
    batch_size: int = Field(64, ge=1, description="Prompts (= responses) per iteration, over all processes.")
    seed: int = Field(0, description="Seeds initialisation, prompt order and every sample.")

    # --- sampling (rollout)
    max_new_tokens: int = Field(48, ge=1, description="Response length limit in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; log-probs are taken at the same "
                               "temperature so the KL is measured on the distribution that was sampled.")
    stop_token_ids: list[int] | None = Field(None, description="Tokens that end a response; default: the "
                                             "model's generation-config EOS id(s).")
    max_prompt_tokens: int = Field(256, ge=1, description="Longest prompt in tokens.")
    truncate_prompts: bool = Field(False, description="Keep the last max_prompt_tokens tokens of an over-long "
                                   "prompt instead of stopping with an error.")
    generation_batch_size: int = Field(64, ge=1, description="Rows decoded together.")
    forward_batch_size: int = Field(64, ge=1, description="Rows per no-grad forward pass during the rollout.")
    old_logprobs: Literal["sampler", "forward"] = Field(
        "sampler", description="Where log π_θold, its entropy and V_θold come from: 'sampler' takes them from the "
        "decode loop (no second policy forward pass; as TRL does); 'forward' recomputes them with a teacher-forced "
        "forward pass — slower, but bit-identical to the update's and the reference's arithmetic, so the KL to an "
        "identical reference is exactly 0 rather than ~1e-7.")
    pack: bool = Field(True, description="Teacher-forced passes (update, reference) on packed rows: each row's "
                       "real tokens end to end, a block-diagonal mask keeping them apart — the same values "
                       "without computing the prompts' left padding or the padding after a stop.")

    # --- reward
    missing_eos_penalty: float | None = Field(None, description="Subtracted from the score of a response that "
                                              "never reached a stop token (TRL's missing_eos_penalty).")
    reward_batch_size: int = Field(32, ge=1, description="Batch size for reward-model scoring.")
    reward_normalise: bool = Field(True, description="Apply the reward model's saved normalisation.")
    reward_clip: float | None = Field(None, gt=0, description="Clip scores to [-reward_clip, reward_clip].")

    # --- KL penalty
    kl_coef: float = Field(0.05, ge=0, description="β: initial (adaptive) or constant (fixed) KL coefficient.")
    kl_control: Literal["fixed", "adaptive"] = Field("fixed", description="'adaptive' = Ziegler et al. 2019's "
                                                     "proportional controller.")
    kl_target: float = Field(6.0, gt=0, description="Target KL per response (nats), adaptive control only.")
    kl_horizon: float = Field(10000, gt=0, description="Controller horizon in samples, adaptive control only.")
    kl_estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator in the reward "
                                                    "penalty: only k1 is accepted (as a reward, k2 and k3 give a "
                                                    "biased KL gradient); ppo/kl_ref is always reported with k3, ≥ 0.")

    # --- PPO
    ppo_epochs: int = Field(4, ge=1, description="Passes over the batch per iteration.")
    minibatch_size: int = Field(16, ge=1, description="Rows per optimiser step (over all processes).")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per minibatch (same result, less memory).")
    learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping by global norm (None = off).")
    clip_range: float = Field(0.2, gt=0, description="ε of the clipped surrogate.")
    clip_range_value: float | None = Field(0.2, gt=0, description="Value clipping around V_old (None = off).")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ent_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount γ.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ.")
    whiten_advantages: bool = Field(True, description="Whiten advantages over the batch.")
    target_approx_kl: float | None = Field(None, gt=0, description="Stop this iteration's PPO epochs once a "
                                           "minibatch's approx_kl exceeds this.")

    # --- model
    dtype: str = Field("float32", description="Weights dtype: float32, bfloat16 or float16.")
    freeze_layers: int = Field(0, description="Freeze the embeddings and the first N transformer blocks "
                               "(negative: all but the last |N|).")
    lora: bool = Field(False, description="Train LoRA adapters; the reference is the adapter-free model.")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    critic: Literal["shared", "separate"] = Field("shared", description="'shared': value head on the policy's "
                                                  "backbone; 'separate': on its own copy of the backbone.")
    value_head_std: float = Field(0.0, ge=0, description="Init std of the value head (0 = zeros).")

    # --- checkpoints and logging
    save_every: int = Field(1, ge=1, description="Checkpoint every N iterations (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    resume: bool = Field(False, description="Continue from the newest checkpoint in output/checkpoints.")
    tensorboard: bool = Field(True, description="Also log to TensorBoard when it is installed.")
    progress: bool = Field(True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _check(self) -> "PPOConfig":
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) > batch_size ({self.batch_size})")
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"batch_size ({self.batch_size}) must be a multiple of minibatch_size "
                             f"({self.minibatch_size})")
        if self.minibatch_size % self.grad_accum_steps:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) must be a multiple of grad_accum_steps "
                             f"({self.grad_accum_steps})")
        if self.lora and self.critic == "separate":
            raise ValueError("critic='separate' with lora is not supported; use the shared value head")
        if self.kl_estimator != "k1":  # E_π[k ∇log π] = ∇KL holds for k1 only (docs/ppo.md, "KL")
            raise ValueError(f"kl_estimator={self.kl_estimator!r} as the reward penalty biases the policy gradient "
                             "away from the KL's; use 'k1' (k3 is what ppo/kl_ref reports anyway)")
        return self
