"""Typed configs of the RL learners: every setting of ``rankloop ppo``, ``rankloop rloo`` and
``rankloop grpo`` (and of the loop's RL stage), documented.

``RLConfig`` holds what every learner shares — inputs, sampling, the reward, the optimiser, the
model, checkpoints — and each learner's config adds its own knobs. Kept apart from the training
loops (``rankloop.rl.ppo`` etc.) so the CLI can build its flags from them without importing torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rankloop.config import (CHECKPOINTING_HELP, DTYPE_HELP, LOGPROB_CHUNK_HELP, PRECISION_HELP, Config, Dtype,
                             Precision, check_precision)


class RLConfig(Config):
    """What every RL learner shares. Loss functions take plain numbers from here, never the config."""

    # --- inputs and outputs
    policy: str = Field(description="Initial policy: a Hugging Face model id or a local path.")
    reference: str | None = Field(None, description="The frozen reference π_ref of the KL penalty (same tokenizer "
                                  "as the policy). Default: the initial policy. In later rounds of the loop this "
                                  "is the original model, so the KL stays anchored to it (InstructGPT's π^SFT).")
    reward: str | list[str] | None = Field(None, description="A rankloop reward-model directory, or 'module:function' / "
                                           "'file.py:function' scoring (prompts, responses[, meta]) -> list[float]; "
                                           "or a list of them, summed with reward_weights and each logged on its own. "
                                           "Not needed when the learner is given a reward function.")
    reward_weights: list[float] | None = Field(None, description="One weight per reward in the list (default: "
                                               "all 1).")
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

    # --- optimiser
    minibatch_size: int = Field(16, ge=1, description="Rows per optimiser step (over all processes).")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per minibatch (same result, less memory).")
    learning_rate: float = Field(1e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping by global norm (None = off).")
    clip_range: float = Field(0.2, gt=0, description="ε of the clipped surrogate.")

    # --- model
    # precision and memory: TrainerConfig's fields, meaning the same (docs/gpu.md)
    dtype: Dtype = Field("float32", description=DTYPE_HELP)
    precision: Precision = Field("autocast", description=PRECISION_HELP)
    gradient_checkpointing: bool = Field(False, description=CHECKPOINTING_HELP)
    logprob_chunk: int = Field(0, ge=0, description=LOGPROB_CHUNK_HELP)
    offload: bool = Field(False, description="Keep the frozen models (a separate reference; reward models) on the "
                          "CPU between uses and move each to the policy's device only for its own pass: less "
                          "accelerator memory for two host-device copies per iteration. No effect on CPU.")
    freeze_layers: int = Field(0, description="Freeze the embeddings and the first N transformer blocks "
                               "(negative: all but the last |N|).")
    lora: bool = Field(False, description="Train LoRA adapters; the reference is the adapter-free model.")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")

    # --- checkpoints and logging
    save_every: int = Field(1, ge=1, description="Checkpoint every N iterations (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on disk.")
    resume: bool = Field(False, description="Continue from the newest checkpoint in output/checkpoints.")
    tensorboard: bool = Field(True, description="Also log to TensorBoard when it is installed.")
    progress: bool = Field(True, description="Show a progress bar.")

    @model_validator(mode="after")
    def _check_rewards(self) -> "RLConfig":
        n = len(self.reward) if isinstance(self.reward, list) else 1
        if isinstance(self.reward, list) and not self.reward:
            raise ValueError("reward: the list of rewards is empty")
        if self.reward_weights is not None and len(self.reward_weights) != n:
            raise ValueError(f"reward_weights has {len(self.reward_weights)} weights for {n} reward(s)")
        check_precision(self.dtype, self.precision)
        return self


class PPOConfig(RLConfig):
    """Every knob of ``rankloop ppo``."""

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
    clip_range_value: float | None = Field(0.2, gt=0, description="Value clipping around V_old (None = off).")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    ent_coef: float = Field(0.0, ge=0, description="Weight of the entropy bonus.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount γ.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ.")
    whiten_advantages: bool = Field(True, description="Whiten advantages over the batch.")
    target_approx_kl: float | None = Field(None, gt=0, description="Stop this iteration's PPO epochs once a "
                                           "minibatch's approx_kl exceeds this.")
    critic: Literal["shared", "separate"] = Field("shared", description="'shared': value head on the policy's "
                                                  "backbone; 'separate': on its own copy of the backbone.")
    value_head_std: float = Field(0.0, ge=0, description="Init std of the value head (0 = zeros).")

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


class GroupConfig(RLConfig):
    """What the critic-free learners (RLOO, GRPO) share: K samples per prompt, the group as the
    baseline, no value model."""

    batch_size: int = Field(16, ge=1, description="Prompts per iteration, over all processes; each gets "
                            "samples_per_prompt responses, so an iteration has batch_size × K rows.")
    samples_per_prompt: int = Field(4, description="K: responses sampled per prompt (≥ 2: each response's baseline "
                                    "is made of the other responses to the same prompt).")
    epochs: int = Field(1, ge=1, description="μ: passes over the iteration's rows; with more than one, the update "
                        "uses the clipped ratio π_θ/π_θold (GRPO's μ, PPO's epochs).")
    minibatch_size: int = Field(16, ge=1, description="Responses (rows) per optimiser step, over all processes.")
    loss_aggregation: Literal["token", "sequence", "constant"] = Field(
        "token", description="How token losses become the minibatch's loss: 'token' = Σ over all tokens / their "
        "count (DAPO; every token weighs the same), 'sequence' = mean over responses of each response's token "
        "mean (the original GRPO; a long response's tokens weigh less), 'constant' = Σ / (rows × max_new_tokens) "
        "(Dr. GRPO; no length bias).")

    @model_validator(mode="after")
    def _check_group(self) -> "GroupConfig":
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt (K) is {self.samples_per_prompt}; a group method needs K ≥ 2 "
                             "(the baseline of a response is made of the other responses to its prompt)")
        rows = self.batch_size * self.samples_per_prompt
        if rows % self.minibatch_size:
            raise ValueError(f"batch_size × samples_per_prompt ({rows} rows) must be a multiple of minibatch_size "
                             f"({self.minibatch_size})")
        if self.minibatch_size % self.grad_accum_steps:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) must be a multiple of grad_accum_steps "
                             f"({self.grad_accum_steps})")
        return self


class RLOOConfig(GroupConfig):
    """Every knob of ``rankloop rloo`` (Ahmadian et al. 2024): the KL in the reward, as PPO has it,
    and each response's baseline the mean reward of the other K − 1."""

    kl_coef: float = Field(0.05, ge=0, description="β of the sequence-level KL penalty in the reward: "
                           "R = r − β Σ_t KL_t.")
    kl_estimator: Literal["k1"] = Field("k1", description="Per-token KL estimator of the penalty in the reward: "
                                        "k1 only, as for PPO (as a reward, k2 and k3 bias the policy gradient away "
                                        "from the KL's); rloo/kl_ref is always reported with k3, ≥ 0.")


class GRPOConfig(GroupConfig):
    """Every knob of ``rankloop grpo`` (Shao et al. 2024): group-normalised advantages and the KL
    in the loss."""

    kl_coef: float = Field(0.04, ge=0, description="β of the KL term in the loss (DeepSeekMath's 0.04; 0 = no KL "
                           "term, the KL to the reference is still reported).")
    kl_estimator: Literal["k3", "k2"] = Field("k3", description="The KL term of the loss, which decides its "
                                              "gradient: 'k3' (GRPO's) follows ∇KL(π_ref‖π), 'k2' = ½(log π/π_ref)² "
                                              "follows ∇KL(π‖π_ref), the KL the RLHF objective penalises.")
    advantage: Literal["group", "group_mean", "batch"] = Field(
        "group", description="'group' = (r − mean_group) / (std_group + ε) (GRPO); 'group_mean' = r − mean_group "
        "(Dr. GRPO: no std division, which up-weights near-unanimous groups); 'batch' = (r − mean) / std over the "
        "whole batch (REINFORCE++).")
    loss_aggregation: Literal["token", "sequence", "constant"] = Field(
        "sequence", description="See GroupConfig: 'sequence' is the original GRPO, 'token' DAPO's, 'constant' "
        "Dr. GRPO's.")
    std_eps: float = Field(1e-4, gt=0, description="ε added to the group's std (TRL's 1e-4).")
