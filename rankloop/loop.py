"""``rankloop loop``: iterated online RLHF — sample, label, train the reward model, PPO, repeat.

One round, in numbered steps (``run_loop``)::

    1. sample   — K candidates per prompt from the current policy         round-R/candidates.jsonl
    2. select   — which prompts go to labelers (random or RM uncertainty) round-R/selected.jsonl
    3. label    — into the labeling app (simulated labelers or people),
                  out through its export                                  round-R/rankings.jsonl
    4. reward   — retrain the reward model on every ranking so far        round-R/rm/
    5. ppo      — continue PPO from the current policy against that RM    round-R/policy/
    6. evaluate — gold score, proxy reward, KL from the initial policy,
                  win rate against it, on held-out prompts                round-R/eval.json

Every stage writes its artifact and, beside it, ``<artifact>.stage.json`` with the stage's config,
the hash of its inputs, its wall time, peak RSS and its typed result (a ``StageResult``;
``read_rounds`` reads them back for the report). A stage whose record exists with the same
input hash is skipped, so a loop interrupted anywhere resumes where it stopped (the labeling step
continues the same project; the reward model and PPO resume from their own checkpoints). Change a
setting and the stages it feeds re-run.

The reward-model and PPO steps take their settings from ``reward:`` / ``ppo:`` (``RewardStage`` /
``PPOStage``: the trainers' own config fields less the ones the loop sets), over the loop's
defaults in ``REWARD_DEFAULTS`` / ``PPO_DEFAULTS``.

The KL penalty of each round's PPO is against the initial policy (``PPOConfig.reference``), as is
the KL the evaluation measures, the quantity of the over-optimisation plots (Gao et al. 2022).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Literal, TypeVar

from pydantic import Field, PrivateAttr, ValidationError, create_model, field_serializer, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from rich.console import Console

from rankloop.config import Config, ConfigError, read_config_file, save_config
from rankloop.io import read_candidates, read_preferences, read_prompts, write_json, write_jsonl, write_rankings
from rankloop.records import Candidate, Prompt
from rankloop.reward.config import RewardTrainConfig
from rankloop.rl.config import PPOConfig

console = Console(stderr=True)


class SamplingSettings(Config):
    """How candidates are drawn from the policy for labeling."""

    max_new_tokens: int = Field(48, ge=1, description="Response length limit in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold (1 = off).")
    top_k: int = Field(0, ge=0, description="Top-k filter (0 = off).")
    batch_size: int = Field(64, ge=1, description="Rows decoded together.")


class LabelingSettings(Config):
    """Who ranks the candidates, and through which labeling database."""

    mode: Literal["simulated", "human"] = Field("simulated", description="'simulated': noisy judges of the gold "
                                                "preference rank through the app's API; 'human': the app is "
                                                "started with the project loaded and the loop waits for people.")
    database_url: str | None = Field(None, description="Labeling database (default: sqlite in the run directory).")
    project_prefix: str = Field("rankloop", description="Projects are named '<prefix>-round-<R>'.")
    labelers: int = Field(4, ge=1, description="Simulated labelers.")
    overlap: int = Field(2, ge=1, description="Labelers who rank each item (agreement is measured on items "
                         "with two or more).")
    agreement: float = Field(0.73, gt=0.5, lt=1, description="Target agreement between two simulated labelers "
                             "(InstructGPT's 73%); the noise is calibrated to it each round.")
    sigma: float | None = Field(None, ge=0, description="Fixed noise σ of the simulated labelers (None: calibrated "
                                "each round so two labelers agree on `agreement` of that round's pairs). Fix it "
                                "when comparing selection methods, so chosen items are not labeled with less noise.")
    gold: str = Field("rankloop.corpus:gold_scores", description="The hidden preference simulated labelers judge "
                      "by: 'module:function' scoring (prompts, responses) -> list[float].")
    password: str = Field("simulated-labeler", description="Password of the simulated labelers' accounts.")
    host: str = Field("127.0.0.1", description="Human mode: address the app listens on.")
    port: int = Field(8000, description="Human mode: port of the app.")
    admin_user: str = Field("admin", description="Human mode: the admin account created for you.")
    admin_password: str | None = Field(None, description="Human mode: its password (default: a random one, printed).")
    poll_seconds: float = Field(5.0, gt=0, description="Human mode: how often to check whether all rankings are in.")
    min_agreement: float | None = Field(None, description="Export filter: keep items whose labelers agree this much.")


# ---------------------------------------------------------------- stage settings

# The loop's defaults for its reward-model and PPO steps — the one place they are set. A field not
# named here takes RewardTrainConfig's / PPOConfig's own default, and a round's `reward:` / `ppo:`
# setting overrides both. They are smaller than the stand-alone commands' defaults because the loop
# retrains both models every round; PPO's KL coefficient is adaptive (Ziegler et al. 2019).
REWARD_DEFAULTS: dict[str, Any] = {"epochs": 4, "lr": 1e-4, "batch_size": 8, "max_length": 128}
PPO_DEFAULTS: dict[str, Any] = {"iterations": 20, "batch_size": 32, "minibatch_size": 8, "ppo_epochs": 4,
                                "learning_rate": 3e-4, "kl_control": "adaptive", "kl_coef": 0.1, "kl_target": 4.0,
                                "kl_horizon": 2000, "missing_eos_penalty": 1.0}
# Defaults taken from the loop's own settings (a stage setting still overrides them): field → the
# LoopConfig attribute it follows.
REWARD_FROM_LOOP = {"seed": "seed"}
PPO_FROM_LOOP = {"seed": "seed", "max_new_tokens": "sampling.max_new_tokens"}
# Fields the loop sets itself every round (data, models, directories, resume); not settable.
REWARD_OWNED = frozenset({"data", "model", "output", "eval_data", "resume", "progress"})
PPO_OWNED = frozenset({"policy", "reference", "reward", "prompts", "output", "resume", "progress"})


def _messages(e: ValidationError) -> str:
    """A ValidationError's errors on one line: ``field: message; …`` (no "Value error, " prefix)."""
    out = []
    for err in e.errors():
        msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]
        out.append(f"{'.'.join(map(str, err['loc']))}: {msg}" if err["loc"] else msg)
    return "; ".join(out)


class StageSettings(Config):
    """The settings a loop config gives one stage: the fields of the stage's own config
    (``trainer``) less the ones the loop sets itself, with the loop's defaults. Made by
    ``stage_settings``; ``build`` makes the trainer's config of a round."""

    trainer: ClassVar[type[Config]]
    owned: ClassVar[frozenset[str]]
    from_loop: ClassVar[dict[str, str]]
    _given: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _not_owned(cls, data: Any) -> Any:
        if isinstance(data, dict) and (bad := cls.owned & set(data)):
            raise PydanticCustomError("loop_owned", "the loop sets {fields} itself", {"fields": str(sorted(bad))})
        return data

    @model_validator(mode="wrap")
    @classmethod
    def _keep_given(cls, data: Any, handler: Callable) -> "StageSettings":
        stage = handler(data)
        if isinstance(data, dict):
            stage._given = dict(data)
        return stage

    @model_validator(mode="after")
    def _check_across_fields(self) -> "StageSettings":
        """The trainer's checks across fields (``minibatch_size`` ≤ ``batch_size``, …) when the loop
        config is loaded, not when the stage starts."""
        placeholders = {n: "-" for n in self.owned if self.trainer.model_fields[n].is_required()}
        try:
            self.build(None, **placeholders)
        except ValidationError as e:
            raise PydanticCustomError("stage_settings", "{errors}", {"errors": _messages(e)}) from None
        return self

    def given(self) -> dict[str, Any]:
        """The settings as written. The stage record and its input hash keep these, as they did
        before the settings were typed (validation turns ``epochs: 4`` into ``4.0``), so a run
        directory made before still resumes without redoing its stages."""
        return dict(self._given)

    def settings(self, loop: "LoopConfig | None") -> dict[str, Any]:
        """Every field: the round's setting, else the loop's default, else the trainer's; a
        ``from_loop`` field left unset follows ``loop`` (the trainer's default when None)."""
        values = self.model_dump()
        for name, attr in self.from_loop.items():
            if values[name] is None:
                if loop is None:
                    del values[name]
                else:
                    values[name] = functools.reduce(getattr, attr.split("."), loop)
        return values

    def build(self, loop: "LoopConfig | None", **owned: Any) -> Config:
        return self.trainer(**self.settings(loop), **owned)


def stage_settings(name: str, trainer: type[Config], owned: frozenset[str], defaults: dict[str, Any],
                   from_loop: dict[str, str]) -> type[StageSettings]:
    """A ``StageSettings`` model of ``trainer``'s fields less ``owned``: the same types, bounds and
    descriptions (so a field added to the trainer is settable in the loop at once), ``defaults``
    as defaults, and each ``from_loop`` field optional (None: follow the loop config)."""
    unknown = (owned | set(defaults) | set(from_loop)) - set(trainer.model_fields)
    if unknown:
        raise TypeError(f"{name}: {trainer.__name__} has no fields {sorted(unknown)}")
    fields_: dict[str, Any] = {}
    for fname, info in trainer.model_fields.items():
        if fname in owned:
            continue
        annotation = info.annotation
        if fname in from_loop:
            annotation = annotation | None  # type: ignore[operator]
            info = FieldInfo.merge_field_infos(info, default=None, description=f"{info.description} "
                                               f"Default: the loop's `{from_loop[fname]}`.")
        elif fname in defaults:
            info = FieldInfo.merge_field_infos(info, default=defaults[fname])
        fields_[fname] = (annotation, info)
    model = create_model(name, __base__=StageSettings, __module__=__name__,
                         __doc__=f"{trainer.__name__}'s fields that a round of the loop may set, with the "
                                 "loop's defaults.", **fields_)
    model.trainer, model.owned, model.from_loop = trainer, owned, dict(from_loop)
    return model


RewardStage = stage_settings("RewardStage", RewardTrainConfig, REWARD_OWNED, REWARD_DEFAULTS, REWARD_FROM_LOOP)
PPOStage = stage_settings("PPOStage", PPOConfig, PPO_OWNED, PPO_DEFAULTS, PPO_FROM_LOOP)

# ---- the other learners (issues 13.3, 14.3) and SFT (issue 12.4): the same pattern as PPO's.
# RLOO / GRPO: the same rollout budget as PPO's defaults (8 prompts × K = 4 samples = 32 responses
# per iteration), one pass over the rows (both papers' μ = 1), the same learning rate and EOS penalty.
RLOO_DEFAULTS: dict[str, Any] = {"iterations": 20, "batch_size": 8, "samples_per_prompt": 4, "minibatch_size": 8,
                                 "epochs": 1, "learning_rate": 3e-4, "missing_eos_penalty": 1.0}
GRPO_DEFAULTS: dict[str, Any] = dict(RLOO_DEFAULTS)
# DPO on every ranking so far: pairwise over all C(K,2) pairs, β = 0.1 (the DPO paper's); a learning
# rate far above the paper's 1e-6, which is for billion-parameter models, as the reward model's is.
DPO_DEFAULTS: dict[str, Any] = {"epochs": 2, "lr": 1e-4, "batch_size": 8, "max_length": 128, "loss": "dpo",
                                "beta": 0.1, "kl_prompts": 16}
# SFT on the round-0 demonstrations (InstructGPT's step 1).
SFT_DEFAULTS: dict[str, Any] = {"epochs": 3, "lr": 3e-4, "batch_size": 8, "max_length": 128}
GROUP_OWNED = PPO_OWNED
GROUP_FROM_LOOP = PPO_FROM_LOOP
DPO_OWNED = frozenset({"data", "model", "output", "reference", "eval_data", "resume", "progress"})
SFT_OWNED = frozenset({"data", "model", "output", "eval_data", "resume", "progress"})
SEED_FROM_LOOP = {"seed": "seed"}


def _learner_stages() -> dict[str, type[StageSettings]]:
    from rankloop.dpo.config import DPOConfig
    from rankloop.rl.config import GRPOConfig, RLOOConfig
    from rankloop.sft.config import SFTConfig

    return {"RLOOStage": stage_settings("RLOOStage", RLOOConfig, GROUP_OWNED, RLOO_DEFAULTS, GROUP_FROM_LOOP),
            "GRPOStage": stage_settings("GRPOStage", GRPOConfig, GROUP_OWNED, GRPO_DEFAULTS, GROUP_FROM_LOOP),
            "DPOStage": stage_settings("DPOStage", DPOConfig, DPO_OWNED, DPO_DEFAULTS, SEED_FROM_LOOP),
            "SFTStage": stage_settings("SFTStage", SFTConfig, SFT_OWNED, SFT_DEFAULTS, SEED_FROM_LOOP)}


_stages = _learner_stages()
RLOOStage, GRPOStage, DPOStage, SFTStage = (_stages[n] for n in ("RLOOStage", "GRPOStage", "DPOStage", "SFTStage"))
Algorithm = Literal["ppo", "rloo", "grpo", "dpo"]
ALGORITHMS: tuple[str, ...] = ("ppo", "rloo", "grpo", "dpo")


class DemonstrationSettings(Config):
    """Round 0 of InstructGPT (Ouyang et al. 2022, step 1): people write answers to prompts, the
    policy is fine-tuned on them (SFT), and from then on the SFT model is the policy's start and
    the KL (or DPO) reference."""

    enabled: bool = Field(False, description="Collect demonstrations and train SFT before the first round.")
    prompts: int | None = Field(None, ge=1, description="Training prompts sent for demonstrations (None: all).")
    mode: Literal["simulated", "human"] = Field("simulated", description="'simulated': demonstrators write through "
                                                "the app's API (see rankloop.simulate.SimulatedDemonstrator); "
                                                "'human': the app is started with the project loaded and the "
                                                "loop waits for people.")
    data: str | None = Field(None, description="A demonstrations file to train SFT on instead of collecting "
                             "them (rankloop's demonstrations.jsonl or TRL's SFT formats).")
    demonstrators: int = Field(2, ge=1, description="Simulated demonstrators.")
    overlap: int = Field(1, ge=1, description="Demonstrations written per prompt.")
    drafts: int = Field(4, ge=1, description="Simulated demonstrators: answers each could write to a prompt, of "
                        "which it submits the one it judges best.")
    sigma: float = Field(0.3, ge=0, description="Simulated demonstrators: noise σ of their judgment of the gold "
                         "score when picking among their drafts.")
    min_gold: float | None = Field(None, description="Simulated review: reject demonstrations whose gold score "
                                   "is below this (None: accept every one).")
    project_prefix: str = Field("rankloop", description="The project is named '<prefix>-demonstrations'.")
    sft: SFTStage = Field(default_factory=SFTStage, description="The SFT step: any SFTConfig field but "  # type: ignore[valid-type]
                          f"{', '.join(sorted(SFT_OWNED))}, which the loop sets. The loop's defaults: "
                          "rankloop.loop.SFT_DEFAULTS.")

    @field_serializer("sft")
    def _as_written(self, stage: StageSettings) -> dict[str, Any]:
        return stage.given()


class LoopConfig(Config):
    """``rankloop loop``: every field can come from ``--config FILE.yaml``."""

    output: str = Field(description="Run directory: one folder per round, the labeling database, the report.")
    policy: str = Field(description="Initial policy: a Hugging Face causal LM id or local path.")
    prompts: str = Field(description="Training prompts JSONL (rankloop's prompt format).")
    eval_prompts: str | None = Field(None, description="Held-out prompts for the evaluation step (none: no eval).")
    rounds: int = Field(1, ge=0, description="Rounds of sample → label → reward model → learner (0: only round 0, "
                        "demonstrations → SFT, and the evaluations).")
    k: int = Field(4, ge=2, description="Candidates per prompt (K).")
    prompts_per_round: int | None = Field(None, ge=1, description="Label budget: prompts sent to labelers per "
                                          "round (None: every training prompt).")
    pool_per_round: int | None = Field(None, ge=1, description="Prompts sampled per round to choose the "
                                       "labeled ones from (None: every training prompt).")
    selection: Literal["random", "spread", "ensemble"] = Field("random", description="How the labeled prompts are "
                                                               "chosen from the pool after round 0: at random, or "
                                                               "by reward-model uncertainty (see rankloop.active).")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings, description="Candidate sampling.")
    labeling: LabelingSettings = Field(default_factory=LabelingSettings, description="Labeling.")
    reward_model: str | None = Field(None, description="Reward-model backbone (default: the initial policy).")
    reward: RewardStage = Field(default_factory=RewardStage, description="The reward-model step: any "
                                "RewardTrainConfig field (epochs, lr, batch_size, max_length, loss, …) but "
                                f"{', '.join(sorted(REWARD_OWNED))}, which the loop sets. The loop's defaults: "
                                "rankloop.loop.REWARD_DEFAULTS.")
    ppo: PPOStage = Field(default_factory=PPOStage, description="The PPO step: any PPOConfig field (iterations, "
                          "batch_size, kl_control, kl_target, learning_rate, …) but "
                          f"{', '.join(sorted(PPO_OWNED))}, which the loop sets. The loop's defaults: "
                          "rankloop.loop.PPO_DEFAULTS.")
    # --- the learner of each round (issues 13.3, 14.3) and the demonstrations before them (12.4)
    algorithm: Algorithm = Field("ppo", description="The policy's learner each round: 'ppo', 'rloo', 'grpo' (against "
                                 "the round's reward model) or 'dpo' (on every ranking so far: iterative DPO; the "
                                 "reward model is still trained, for evaluation and selection).")
    rloo: RLOOStage = Field(default_factory=RLOOStage, description="The RLOO step (algorithm: rloo): any "  # type: ignore[valid-type]
                            f"RLOOConfig field but {', '.join(sorted(GROUP_OWNED))}. Defaults: "
                            "rankloop.loop.RLOO_DEFAULTS.")
    grpo: GRPOStage = Field(default_factory=GRPOStage, description="The GRPO step (algorithm: grpo): any "  # type: ignore[valid-type]
                            f"GRPOConfig field but {', '.join(sorted(GROUP_OWNED))}. Defaults: "
                            "rankloop.loop.GRPO_DEFAULTS.")
    dpo: DPOStage = Field(default_factory=DPOStage, description="The DPO step (algorithm: dpo): any DPOConfig "  # type: ignore[valid-type]
                          f"field but {', '.join(sorted(DPO_OWNED))}. Defaults: rankloop.loop.DPO_DEFAULTS.")
    demonstrations: DemonstrationSettings = Field(default_factory=DemonstrationSettings,
                                                  description="Round 0: demonstrations → SFT.")
    train_reward_model: bool = Field(True, description="Train the reward model each round. algorithm dpo only may "
                                     "turn it off (then no proxy figures, and selection stays random).")
    eval_samples: int = Field(2, ge=1, description="Responses per held-out prompt in the evaluation.")
    gold: str | None = Field(None, description="A 'module:function' gold preference for the evaluation "
                             "(default: labeling.gold in simulated mode, none in human mode).")
    rm_eval_data: str | None = Field(None, description="Held-out rankings for reward-model accuracy (default: "
                                     "built from the gold preference on the held-out prompts when there is one).")
    seed: int = Field(0, description="Seeds sampling, selection, labelers and training.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (None: torch's default). On a "
                                "busy machine 1 can be several times faster than oversubscribed cores.")
    progress: bool = Field(True, description="Show progress bars.")

    @field_serializer("reward", "ppo", "rloo", "grpo", "dpo")
    def _as_written(self, stage: StageSettings) -> dict[str, Any]:
        return stage.given()  # loop_config.json keeps the settings as written (see StageSettings.given)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> "LoopConfig":
        """The loop config in a YAML (or JSON) file, then every override that is not None — a
        mapping is merged into the file's section (``labeling={"mode": "human"}`` keeps the file's
        other labeling settings). A relative ``prompts``, ``eval_prompts`` or ``rm_eval_data``
        that names no file from here but one beside the config file is read from beside it."""
        path = Path(path)
        data = read_config_file(path)
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            elif value is not None:
                data[key] = value
        try:
            cfg = cls.model_validate(data)
        except ValidationError as e:
            raise ConfigError(f"{path}: invalid {cls.__name__}: {_messages(e)}") from None
        base = path.resolve().parent
        fix = {key: str(base / v) for key in ("prompts", "eval_prompts", "rm_eval_data")
               if (v := getattr(cfg, key)) and not Path(v).is_absolute() and not Path(v).exists()
               and (base / v).exists()}
        return cfg.model_copy(update=fix) if fix else cfg

    @model_validator(mode="after")
    def _learner_needs_rm(self) -> "LoopConfig":
        if self.rounds == 0 and not self.demonstrations.enabled:
            raise ValueError("rounds: 0 runs only round 0, demonstrations → SFT: enable demonstrations")
        if not self.train_reward_model and self.algorithm != "dpo":
            raise ValueError(f"train_reward_model: false needs algorithm dpo ({self.algorithm} learns against the "
                             "reward model)")
        if self.demonstrations.enabled and self.demonstrations.mode == "simulated" and not self.demonstrations.data \
                and self.labeling.mode == "simulated" and not self.labeling.gold:
            raise ValueError("demonstrations: simulated demonstrators need labeling.gold")
        return self

    def gold_spec(self) -> str | None:
        if self.gold is not None:
            return self.gold
        return self.labeling.gold if self.labeling.mode == "simulated" else None


def reward_train_config(cfg: LoopConfig, data: Path, eval_data: Path | None, out: Path,
                        resume: bool) -> RewardTrainConfig:
    """The reward-model step's config of a round (see REWARD_DEFAULTS for where each value comes from)."""
    rcfg = cfg.reward.build(cfg, data=str(data), model=cfg.reward_model or cfg.policy, output=str(out),
                            eval_data=str(eval_data) if eval_data else None, resume=resume, progress=cfg.progress)
    return rcfg  # type: ignore[return-value]


def ppo_config(cfg: LoopConfig, policy: str, prompts: Path, out: Path, resume: bool,
               reference: str | None = None) -> PPOConfig:
    """The PPO step's config of a round, continuing from ``policy``. The KL is always against the
    original model (``reference``: the initial policy, or the SFT model when there are
    demonstrations), however many rounds the policy has moved."""
    pcfg = cfg.ppo.build(cfg, policy=str(policy), reference=str(reference or cfg.policy), prompts=str(prompts),
                         output=str(out), resume=resume, progress=cfg.progress)
    return pcfg  # type: ignore[return-value]


def group_config(cfg: LoopConfig, algorithm: str, policy: str, reference: str, prompts: Path, out: Path,
                 resume: bool) -> Config:
    """The RLOO / GRPO step's config of a round: as ``ppo_config``, from ``cfg.rloo`` / ``cfg.grpo``."""
    stage: StageSettings = getattr(cfg, algorithm)
    return stage.build(cfg, policy=str(policy), reference=str(reference), prompts=str(prompts), output=str(out),
                       resume=resume, progress=cfg.progress)


def dpo_config(cfg: LoopConfig, policy: str, reference: str, data: Path, eval_data: Path | None, out: Path,
               resume: bool) -> Config:
    """The DPO step's config of a round: from the current ``policy`` on every ranking so far, the
    reference the initial (or SFT) model — iterative DPO."""
    return cfg.dpo.build(cfg, data=str(data), model=str(policy),
                         reference=None if str(reference) == str(policy) else str(reference), output=str(out),
                         eval_data=str(eval_data) if eval_data else None, resume=resume, progress=cfg.progress)


def sft_config(cfg: LoopConfig, data: Path, out: Path, resume: bool) -> Config:
    """The SFT step's config: the initial policy fine-tuned on the demonstrations."""
    return cfg.demonstrations.sft.build(cfg, data=str(data), model=cfg.policy, output=str(out), eval_data=None,
                                        resume=resume, progress=cfg.progress)


# ---------------------------------------------------------------- stage results

R = TypeVar("R", bound="StageResult")


@dataclass(frozen=True)
class StageResult:
    """What a stage did. ``record()`` is the ``result`` of its ``.stage.json``, under the field
    names; a skipped stage's result is read back with ``from_record``."""

    # Figures left out of the record when they were not measured (None), as the stages always wrote them.
    optional: ClassVar[frozenset[str]] = frozenset()
    # The dict field holding the figures other modules give under their own names: flattened into
    # the record after the typed fields, and every other key of a record goes back into it.
    rest: ClassVar[str | None] = None

    def record(self) -> dict[str, Any]:
        rec = {f.name: getattr(self, f.name) for f in fields(self)
               if not (f.name in self.optional and getattr(self, f.name) is None)}
        if self.rest is not None:
            rec.update(rec.pop(self.rest))
        return rec

    @classmethod
    def from_record(cls: type[R], rec: dict[str, Any]) -> R:
        names = [f.name for f in fields(cls) if f.name != cls.rest]
        values: dict[str, Any] = {name: rec.get(name) for name in names}
        if cls.rest is not None:
            values[cls.rest] = {k: v for k, v in rec.items() if k not in names}
        return cls(**values)


@dataclass(frozen=True)
class GoldEvalResult(StageResult):
    """The held-out rankings by the gold preference (``eval/gold_rankings.jsonl``)."""

    rankings: int


@dataclass(frozen=True)
class SampleResult(StageResult):
    candidates: int
    prompts: int


@dataclass(frozen=True)
class SelectResult(StageResult):
    method: str  # what chose them: "random" in round 0, else LoopConfig.selection
    selected: int
    details: dict[str, Any]  # rankloop.active.select_prompts' figures (eligible, uncertainty_…)

    rest: ClassVar[str | None] = "details"


@dataclass(frozen=True)
class LabelResult(StageResult):
    project: str
    database: str  # without its credentials
    sigma: float | None  # simulated labelers' noise σ (None: people)
    expected_agreement: float | None  # the agreement σ gives on this round's items (None: people)
    # The labeling app's figures and its export's counts, under their own names (app_pairwise_agreement,
    # rankings_exported, …)
    figures: dict[str, Any]

    optional: ClassVar[frozenset[str]] = frozenset({"sigma", "expected_agreement"})
    rest: ClassVar[str | None] = "figures"

    @property
    def rankings(self) -> int | None:
        return self.figures.get("rankings_exported")

    @property
    def agreement(self) -> float | None:
        """The labelers' pairwise agreement the app measured (None: not measured)."""
        return self.figures.get("app_pairwise_agreement")


@dataclass(frozen=True)
class RewardResult(StageResult):
    train_rankings: int
    rm_accuracy: float | None = None  # pairwise accuracy on the held-out rankings (None: none given)
    rm_eval: dict[str, float] | None = None  # rankloop.reward.eval's numeric metrics on them

    optional: ClassVar[frozenset[str]] = frozenset({"rm_accuracy", "rm_eval"})


@dataclass(frozen=True)
class PPOResult(StageResult):
    iterations: int
    final_reward: float | None  # the last iteration's objective/reward (None: no iteration logged)
    final_kl_ref: float | None  # its ppo/kl_ref (k3, nats per response, to the reference)
    final_kl_coef: float | None  # β for the next iteration


@dataclass(frozen=True)
class GroupResult(StageResult):
    """An RLOO or GRPO round (``rankloop.rl.rloo`` / ``grpo``): PPOResult's figures, from its own metrics."""

    algorithm: str  # "rloo" or "grpo"
    iterations: int
    final_reward: float | None  # the last iteration's objective/reward (None: no iteration logged)
    final_kl_ref: float | None  # its <algorithm>/kl_ref (k3, nats per response, to the reference)


@dataclass(frozen=True)
class DPOResult(StageResult):
    """A DPO round (``rankloop.dpo``) on every ranking so far."""

    steps: int
    train_rankings: int
    final_loss: float | None  # the last logged training loss
    final_accuracy: float | None  # its implicit-reward pairwise accuracy on the training batches
    eval_accuracy: float | None = None  # implicit-reward pairwise accuracy on the held-out gold rankings
    eval_chosen_logp: float | None = None  # the policy's log-prob of the held-out chosen responses (DPO's
    # known failure is that it falls: compare eval_chosen_logp_ref)
    eval_chosen_logp_ref: float | None = None
    kl_ref: float | None = None  # KL to the reference on held-out prompts (rankloop.dpo's estimate)

    optional: ClassVar[frozenset[str]] = frozenset({"eval_accuracy", "eval_chosen_logp", "eval_chosen_logp_ref",
                                                    "kl_ref"})


@dataclass(frozen=True)
class DemonstrationResult(StageResult):
    """The demonstrations of round 0, out of the labeling app's export (or read from a file)."""

    source: str  # "simulated", "human" or the file they were read from
    demonstrations: int  # exported (accepted) demonstrations
    prompts: int  # prompts sent for demonstrations
    figures: dict[str, Any]  # the simulated demonstrators' and reviewer's counts, the export's

    rest: ClassVar[str | None] = "figures"


@dataclass(frozen=True)
class SFTResult(StageResult):
    """The SFT step (``rankloop.sft``) on the demonstrations."""

    steps: int
    demonstrations: int
    final_loss: float | None  # the last logged training loss


@dataclass(frozen=True)
class EvalResult(StageResult):
    """A policy on the held-out prompts; also the artifact itself (``eval.json``)."""

    policy: str
    samples: int
    kl_from_initial: float  # Σ_t log π − log π_0 over its own samples, mean over samples (nats)
    response_tokens: float
    eos_frac: float
    gold: float | None = None  # mean gold score (None: no gold preference)
    win_rate_vs_initial: float | None = None  # by the gold preference, ties half (None: initial policy)
    proxy: float | None = None  # mean reward-model score (None: no reward model yet)
    proxy_initial: float | None = None  # the same reward model's mean score of the initial policy's samples

    optional: ClassVar[frozenset[str]] = frozenset({"gold", "win_rate_vs_initial", "proxy", "proxy_initial"})


@dataclass(frozen=True)
class RoundDir:
    """Where round R's artifacts are (``<run>/round-R/``)."""

    path: Path

    @property
    def pool(self) -> Path:
        """The prompts sampled this round."""
        return self.path / "pool.jsonl"

    @property
    def candidates(self) -> Path:
        return self.path / "candidates.jsonl"

    @property
    def selected(self) -> Path:
        """The prompts sent to labelers."""
        return self.path / "selected.jsonl"

    @property
    def rankings(self) -> Path:
        return self.path / "rankings.jsonl"

    @property
    def rm_data(self) -> Path:
        """Every ranking so far: the reward model's training data."""
        return self.path / "rm_data.jsonl"

    @property
    def rm(self) -> Path:
        return self.path / "rm"

    @property
    def policy(self) -> Path:
        return self.path / "policy"

    @property
    def eval(self) -> Path:
        return self.path / "eval.json"

    @property
    def eval_samples(self) -> Path:
        return self.path / "eval.samples.jsonl"


def round_dir(run: str | Path, rnd: int) -> RoundDir:
    return RoundDir(Path(run) / f"round-{rnd}")


@dataclass(frozen=True)
class RoundResult:
    """One round's stage results, read back from its records; None: the stage has not finished."""

    round: int
    sample: SampleResult | None
    select: SelectResult | None
    label: LabelResult | None
    reward: RewardResult | None
    ppo: PPOResult | None  # algorithm ppo only
    eval: EvalResult | None
    learner: "PPOResult | GroupResult | DPOResult | None" = None  # whichever learner the round ran
    algorithm: str = "ppo"


LEARNER_RESULTS: dict[str, type[StageResult]] = {"ppo": PPOResult, "rloo": GroupResult, "grpo": GroupResult,
                                                 "dpo": DPOResult}


def read_stage_result(artifact: Path, kind: type[R]) -> R | None:
    """The result in ``artifact``'s stage record (None: the stage has not finished)."""
    rec = _record_path(artifact)
    if not rec.exists():
        return None
    result = json.loads(rec.read_text()).get("result")
    return kind.from_record(result) if result is not None else None


def read_eval(path: Path) -> EvalResult | None:
    return EvalResult.from_record(json.loads(path.read_text())) if path.exists() else None


def read_rounds(run: str | Path) -> list[RoundResult]:
    """Every round of a run directory, finished or not, in order."""
    run = Path(run)
    out = []
    for rnd in sorted(int(p.name.split("-")[1]) for p in run.glob("round-*") if p.is_dir()):
        d = round_dir(run, rnd)
        algorithm = learner_algorithm(d.policy)
        learner = read_stage_result(d.policy, LEARNER_RESULTS[algorithm])
        out.append(RoundResult(rnd, read_stage_result(d.candidates, SampleResult),
                               read_stage_result(d.selected, SelectResult),
                               read_stage_result(d.rankings, LabelResult), read_stage_result(d.rm, RewardResult),
                               learner if algorithm == "ppo" else None, read_eval(d.eval), learner, algorithm))
    return out


def learner_algorithm(artifact: Path) -> str:
    """Which learner made a round's policy: its stage record says (``algorithm``; none: PPO, as the
    records before there was a choice)."""
    rec = _record_path(artifact)
    if not rec.exists():
        return "ppo"
    return json.loads(rec.read_text()).get("config", {}).get("algorithm", "ppo")


def read_demonstrations_stage(run: str | Path) -> tuple[DemonstrationResult | None, SFTResult | None,
                                                        EvalResult | None]:
    """Round 0's results (None each where it did not run or has not finished)."""
    d = Path(run) / "demonstrations"
    return (read_stage_result(d / "demonstrations.jsonl", DemonstrationResult),
            read_stage_result(d / "policy", SFTResult), read_eval(Path(run) / "eval" / "sft.json"))


# ---------------------------------------------------------------- stage records


def file_hash(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (names and contents; checkpoints and logs left out)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(path.rglob("*")):
            rel = f.relative_to(path)
            if not f.is_file() or rel.parts[0] in ("checkpoints", "tensorboard") or f.name.endswith(
                    (".stage.json", "metrics.jsonl", ".tmp")) or f.name.startswith("."):
                continue
            h.update(str(rel).encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()


def inputs_hash(config: dict, inputs: dict[str, Any]) -> str:
    parts = {"config": config}
    for name, v in inputs.items():
        parts[name] = file_hash(v) if isinstance(v, (str, Path)) and Path(v).exists() else v
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _record_path(artifact: Path) -> Path:
    return artifact.parent / f"{artifact.name}.stage.json"


class PeakRSS:
    """Peak resident memory of this process during a ``with`` block (sampled from /proc), in bytes."""

    def __enter__(self) -> "PeakRSS":
        self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())


def run_stage(name: str, artifact: Path, kind: type[R], config: dict, inputs: dict[str, Any], fn: Callable[[], R],
              timings: list[dict] | None = None) -> R:
    """Run ``fn`` unless ``artifact`` was already made from the same config and inputs.

    Returns ``fn``'s result, or the one saved in the stage record (a ``kind``) when skipped.
    """
    rec_path = _record_path(artifact)
    digest = inputs_hash(config, inputs)
    if rec_path.exists() and artifact.exists():
        rec = json.loads(rec_path.read_text())
        if rec.get("inputs_hash") == digest:
            console.print(f"[dim]✓ {name}: done before ({artifact})[/]")
            if timings is not None:
                timings.append({"stage": name, "artifact": str(artifact), "skipped": True,
                                "seconds": rec.get("seconds"), "peak_rss_mib": rec.get("peak_rss_mib")})
            return kind.from_record(rec.get("result") or {})
    console.print(f"[bold cyan]▶ {name}[/]")
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        result = fn()
    seconds = time.perf_counter() - t0
    rec = {"stage": name, "artifact": str(artifact), "config": config, "inputs": {k: str(v) for k, v in inputs.items()},
           "inputs_hash": digest, "seconds": round(seconds, 3), "peak_rss_mib": round(rss.peak / 2**20, 1),
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "result": result.record()}
    write_json(rec_path, rec)
    if timings is not None:
        timings.append({"stage": name, "artifact": str(artifact), "skipped": False, "seconds": rec["seconds"],
                        "peak_rss_mib": rec["peak_rss_mib"]})
    console.print(f"[green]✓ {name}[/] {seconds:.1f}s, peak RSS {rec['peak_rss_mib']:.0f} MiB")
    return result


# ---------------------------------------------------------------- helpers


def load_fn(spec: str) -> Callable:
    from rankloop.rl.rewards import load_reward

    return load_reward(spec)


def database_url(cfg: LoopConfig) -> str:
    return cfg.labeling.database_url or f"sqlite:///{Path(cfg.output).resolve() / 'labels.db'}"


def _write_candidates(path: Path, cands: list[Candidate]) -> None:
    write_jsonl(path, cands)


def sample_responses(model, tokenizer, prompts: list[Prompt], n: int, max_new_tokens: int, temperature: float,
                     seed: int, batch_size: int = 64):
    """``n`` responses per prompt with their token ids (for KL), via rankloop.sampling."""
    from rankloop.sampling import generate, prompt_text

    texts = [prompt_text(p, tokenizer) for p in prompts]
    return generate(model, tokenizer, texts, k=n, max_new_tokens=max_new_tokens, temperature=temperature,
                    seed=seed, batch_size=batch_size, min_new_tokens=1)


def sequence_logp(model, batch, temperature: float = 1.0, chunk: int = 64):
    """Σ_t log π(y_t | x, y_<t) over each sampled response: (N,)."""
    import torch

    from rankloop.ops import logprobs_from_logits
    from rankloop.rl.rollout import lm_response_logits

    out = []
    ids, am, resp, rmask = batch.input_ids, batch.attention_mask, batch.response_ids, batch.response_mask
    P = batch.prompt_ids.size(1)
    with torch.no_grad():
        for s in range(0, ids.size(0), chunk):
            logits = lm_response_logits(model, ids[s:s + chunk], am[s:s + chunk], P, temperature)
            lp = logprobs_from_logits(logits, resp[s:s + chunk])  # (b, R)
            out.append((lp * rmask[s:s + chunk]).sum(1))
    return torch.cat(out)


# ---------------------------------------------------------------- the steps


def step_sample(cfg: LoopConfig, policy: str, prompts: list[Prompt], rnd: int, out: Path) -> SampleResult:
    from rankloop.sampling import sample_candidates

    s = cfg.sampling
    cands = sample_candidates(policy, prompts, cfg.k, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                              top_p=s.top_p, top_k=s.top_k, seed=cfg.seed * 1000 + rnd, batch_size=s.batch_size,
                              policy_name=f"round-{rnd}", round=rnd)
    _write_candidates(out, cands)
    return SampleResult(candidates=len(cands), prompts=len(prompts))


def step_select(cfg: LoopConfig, rnd: int, pool: list[Prompt], cands_path: Path, prev_rm: Path | None,
                labeled_rankings: list[Path], out: Path) -> SelectResult:
    from rankloop.active import select_prompts

    cands = read_candidates(cands_path)
    budget = cfg.prompts_per_round or len(pool)
    method = cfg.selection if prev_rm is not None else "random"
    chosen, info = select_prompts(pool, cands, budget, method=method, reward_model=prev_rm,
                                  labeled=labeled_rankings, seed=cfg.seed * 1000 + rnd, k=cfg.k)
    write_jsonl(out, chosen)
    return SelectResult(method=method, selected=len(chosen), details=info)


def _start_server(app, host: str, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    for _ in range(400):
        if server.started or not t.is_alive():
            break
        time.sleep(0.05)
    if not server.started:
        server.should_exit = True
        raise RuntimeError(f"could not start the labeling app on http://{host}:{port} (is the port in use? "
                           "set labeling.port, or --port for the quickstart)")
    return server, t


@contextlib.contextmanager
def _human_session(cfg: LoopConfig, app, admin_pw: str, name: str, load: Callable[[Any], int], todo: str,
                   waiting: str, done: Callable[[Any, int, dict], bool]) -> Iterator[tuple[Any, int]]:
    """Human mode of a labeling step: serve ``app`` on ``labeling.host``/``port``, log in as the admin,
    ``load(admin)`` the project (its id), tell the operator where to go (``todo``: the sentence after
    "Project … is loaded"), then poll the project's progress every ``labeling.poll_seconds`` under a
    ``waiting`` bar until ``done(admin, pid, progress)``. Yields ``(admin, pid)`` (the admin's client,
    still logged in) for the caller to read the results; the server stops on leaving, also on error."""
    from rankloop.labeling.client import LabelingClient

    lab = cfg.labeling
    server, thread = _start_server(app, lab.host, lab.port)
    try:
        with LabelingClient(f"http://{lab.host}:{lab.port}") as admin:
            admin.login(lab.admin_user, admin_pw)
            pid = load(admin)
            console.print(f"\n[bold]Labeling app:[/] http://{lab.host}:{lab.port}/login  "
                          f"admin [bold]{lab.admin_user}[/] / [bold]{admin_pw}[/]\n"
                          f"Project [bold]{name}[/] (id {pid}) is loaded{todo}\n")
            with _bar(cfg, waiting, admin.progress(pid)["slots"]) as (bar, task):
                while True:
                    prog = admin.progress(pid)
                    bar.update(task, completed=prog["slots_done"])
                    if done(admin, pid, prog):
                        break
                    time.sleep(lab.poll_seconds)
            yield admin, pid
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def step_label(cfg: LoopConfig, rnd: int, prompts: list[Prompt], cands: list[Candidate], out: Path) -> LabelResult:
    """Import the round's items into the labeling app, get them ranked, export the rankings."""
    from fastapi.testclient import TestClient

    from rankloop.labeling.app import create_app
    from rankloop.labeling.client import LabelingClient, LabelingError
    from rankloop.labeling.export import export_project

    lab = cfg.labeling
    url = database_url(cfg)
    name = f"{lab.project_prefix}-round-{rnd}"
    admin_pw = lab.admin_password or os.environ.get("RANKLOOP_ADMIN_PASSWORD") or _admin_password(cfg)
    app = create_app(url, admin=(lab.admin_user, admin_pw))
    keep = {p.id for p in prompts}
    cands = [c for c in cands if c.prompt_id in keep]
    sigma: float | None = None
    agreement: float | None = None
    figures: dict[str, Any] = {}

    def load(admin: LabelingClient) -> int:
        existing = {p["name"]: p for p in admin.projects()}
        if name in existing:  # resumed: the project and its imported items are there already
            pid = existing[name]["id"]
            if admin.progress(pid)["items"] > 0:
                return pid
        else:
            pid = admin.create_project(name, k=cfg.k, overlap=min(lab.overlap, lab.labelers) if lab.mode == "simulated"
                                       else lab.overlap,
                                       instructions="Rank the answers best to worst: kind and polite, about the "
                                       "asked topic, about 18 words, no repetition, finished sentences.")["id"]
        admin.import_candidates(pid, prompts, cands)
        return pid

    if lab.mode == "simulated":
        from rankloop.simulate import SimulatedLabeler, calibrate_sigma, expected_agreement

        gold = load_fn(lab.gold)
        by_prompt: dict[str, list[str]] = {}
        for c in cands:
            by_prompt.setdefault(c.prompt_id, []).append(c.text)
        ptext = {p.id: p for p in prompts}
        groups = [list(gold([ptext[pid]] * len(ts), ts)) for pid, ts in by_prompt.items()]
        texts = list(by_prompt.values())  # copies of one answer: every labeler ties them
        sigma = lab.sigma if lab.sigma is not None else calibrate_sigma(groups, lab.agreement, texts)
        labelers = [SimulatedLabeler(f"sim-labeler-{i}", sigma, gold, seed=cfg.seed * 1000 + rnd)
                    for i in range(lab.labelers)]
        from rankloop.simulate import label_project

        with TestClient(app) as http:
            admin = LabelingClient(http)
            admin.login(lab.admin_user, admin_pw)
            pid = load(admin)
            total = admin.progress(pid)["slots"]
            with _bar(cfg, f"simulated labeling (σ = {sigma:.3f})", total) as (bar, task):
                bar.update(task, completed=admin.progress(pid)["slots_done"])
                stats = label_project(admin, pid, labelers, lab.password, on_submit=lambda: bar.advance(task))
        agreement = expected_agreement(groups, sigma, texts)
        figures.update(stats)
    else:
        def ranked(admin: LabelingClient, pid: int, prog: dict) -> bool:
            return prog["slots_done"] >= prog["slots"]

        with _human_session(cfg, app, admin_pw, name, load, ". Create labeler accounts and invite them on the admin "
                            "page; the loop continues when every ranking is in.", "waiting for rankings",
                            ranked) as (admin, pid):
            try:
                figures.update({f"app_{k}": v for k, v in admin.agreement(pid).items()})
            except LabelingError:
                pass
    exported = export_project(url, name, out, min_agreement=lab.min_agreement)
    exported.pop("project", None)  # the name again
    figures.update(exported)
    return LabelResult(project=name, database=url.split("@")[-1], sigma=sigma, expected_agreement=agreement,
                       figures=figures)


def _admin_password(cfg: LoopConfig) -> str:
    """A per-run admin password, kept in the run directory (mode 600) so a resumed run logs in again."""
    import secrets

    path = Path(cfg.output) / ".admin-password"
    if path.exists():
        return path.read_text().strip()
    pw = secrets.token_urlsafe(12)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pw + "\n")
    path.chmod(0o600)
    return pw


class _bar:
    def __init__(self, cfg: LoopConfig, label: str, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console, disable=not cfg.progress, transient=True)
        self.total = total

    def __enter__(self):
        self.p.start()
        return self.p, self.p.add_task("x", total=self.total)

    def __exit__(self, *exc):
        self.p.stop()


def step_reward(cfg: LoopConfig, data: Path, eval_data: Path | None, out: Path) -> RewardResult:
    from rankloop.reward.train import train_reward_model

    resume = (out / "checkpoints").exists() and any((out / "checkpoints").iterdir())
    train_reward_model(reward_train_config(cfg, data, eval_data, out, resume))
    n = len(read_preferences(data))
    if eval_data is None:
        return RewardResult(train_rankings=n)
    from rankloop.reward.eval import evaluate_reward_model

    m = evaluate_reward_model(out, eval_data)
    return RewardResult(train_rankings=n, rm_accuracy=m.get("pairwise_accuracy"),
                        rm_eval={k: v for k, v in m.items() if isinstance(v, (int, float))})


def _iter_checkpoints(ckpts: Path) -> bool:
    return ckpts.exists() and any(p.name.startswith("iter-") for p in ckpts.iterdir())


def _proxy_reward(cfg: LoopConfig, rm_dir: Path, out: Path, resume: bool, batch_size: int) -> Callable:
    """The round's reward model as the RL learner's reward; the gold score of every rollout is
    logged beside the learner's own metrics (``gold.jsonl``) when the task has one."""
    from rankloop.reward.model import RewardScorer

    ckpts = out / "checkpoints"
    scorer = RewardScorer.from_pretrained(rm_dir)
    gold_spec = cfg.gold_spec()
    gold = load_fn(gold_spec) if gold_spec else None
    log = out / "gold.jsonl"
    if resume:  # keep the rows of the iterations the checkpoint holds
        done = max(int(p.name.split("-")[1]) for p in ckpts.iterdir() if p.name.startswith("iter-"))
        rows = log.read_text().splitlines()[:done] if log.exists() else []
        log.write_text("".join(r + "\n" for r in rows))
    else:
        out.mkdir(parents=True, exist_ok=True)
        log.write_text("")

    def reward_fn(prompts: list[str], responses: list[str]) -> list[float]:
        proxy = scorer.score(prompts, responses, batch_size=batch_size, normalise=True).tolist()
        if gold is not None:
            g = list(gold(prompts, responses))
            with open(log, "a") as f:
                f.write(json.dumps({"gold": sum(g) / len(g), "proxy": sum(proxy) / len(proxy)}) + "\n")
        return proxy

    return reward_fn


def _metric_rows(out: Path, key: str) -> list[dict]:
    path = out / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    return [r for r in rows if key in r]


def step_ppo(cfg: LoopConfig, policy: str, rm_dir: Path, prompts_path: Path, out: Path,
             reference: str | None = None) -> PPOResult:
    """PPO from ``policy`` against the reward model; the gold score of every rollout is logged
    beside PPO's own metrics (``gold.jsonl``) when the task has one."""
    from rankloop.rl.ppo import run_ppo

    resume = _iter_checkpoints(out / "checkpoints")
    pcfg = ppo_config(cfg, policy, prompts_path, out, resume, reference)
    run_ppo(pcfg, reward_fn=_proxy_reward(cfg, rm_dir, out, resume, pcfg.reward_batch_size))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = rows[-1] if rows else {}
    return PPOResult(iterations=len(rows), final_reward=last.get("objective/reward"),
                     final_kl_ref=last.get("ppo/kl_ref"), final_kl_coef=last.get("kl_coef_next"))


def step_group(cfg: LoopConfig, algorithm: str, policy: str, reference: str, rm_dir: Path, prompts_path: Path,
               out: Path) -> GroupResult:
    """RLOO or GRPO from ``policy`` against the round's reward model, KL to ``reference``."""
    resume = _iter_checkpoints(out / "checkpoints")
    gcfg = group_config(cfg, algorithm, policy, reference, prompts_path, out, resume)
    reward_fn = _proxy_reward(cfg, rm_dir, out, resume, gcfg.reward_batch_size)  # type: ignore[attr-defined]
    if algorithm == "rloo":
        from rankloop.rl.rloo import run_rloo

        run_rloo(gcfg, reward_fn=reward_fn)  # type: ignore[arg-type]
    else:
        from rankloop.rl.grpo import run_grpo

        run_grpo(gcfg, reward_fn=reward_fn)  # type: ignore[arg-type]
    rows = _metric_rows(out, "iteration")
    last = rows[-1] if rows else {}
    return GroupResult(algorithm=algorithm, iterations=len(rows), final_reward=last.get("objective/reward"),
                       final_kl_ref=last.get(f"{algorithm}/kl_ref"))


def step_dpo(cfg: LoopConfig, policy: str, reference: str, data: Path, eval_data: Path | None,
             out: Path) -> DPOResult:
    """DPO from ``policy`` on every ranking so far (``data``), reference the initial (or SFT) model."""
    from rankloop.dpo.train import train_dpo

    ckpts = out / "checkpoints"
    resume = ckpts.exists() and any(ckpts.iterdir())
    train_dpo(dpo_config(cfg, policy, reference, data, eval_data, out, resume))  # type: ignore[arg-type]
    summary = json.loads((out / "train_summary.json").read_text())
    rows = _metric_rows(out, "loss")
    last = rows[-1] if rows else {}
    ev = summary.get("eval") or {}
    return DPOResult(steps=summary["steps"], train_rankings=summary["rankings"], final_loss=last.get("loss"),
                     final_accuracy=last.get("reward/accuracy"), eval_accuracy=ev.get("pairwise_accuracy"),
                     eval_chosen_logp=ev.get("logps_chosen"), eval_chosen_logp_ref=ev.get("logps_chosen_ref"),
                     kl_ref=ev.get("kl_ref"))


def step_sft(cfg: LoopConfig, data: Path, out: Path) -> SFTResult:
    """SFT of the initial policy on round 0's demonstrations."""
    from rankloop.sft.train import train_sft

    ckpts = out / "checkpoints"
    resume = ckpts.exists() and any(ckpts.iterdir())
    train_sft(sft_config(cfg, data, out, resume))  # type: ignore[arg-type]
    summary = json.loads((out / "train_summary.json").read_text())
    rows = _metric_rows(out, "loss")
    return SFTResult(steps=summary["steps"], demonstrations=summary["demonstrations"],
                     final_loss=rows[-1]["loss"] if rows else None)


def step_eval(cfg: LoopConfig, policy: str, base: str, rm_dir: Path | None, eval_prompts: list[Prompt],
              base_samples: Path, out: Path) -> EvalResult:
    """Held-out prompts: the policy's gold score and proxy reward, its KL from the initial policy
    (Σ_t log π − log π_0 over its own samples, averaged), and its win rate against the initial
    policy by the gold preference (ties count half)."""
    import torch

    from rankloop.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(policy, padding_side="left")
    model = load_causal_lm(policy, tokenizer=tok).eval()
    ref = model if str(policy) == str(base) else load_causal_lm(base, tokenizer=tok).eval()
    s = cfg.sampling
    with torch.no_grad():
        batch = sample_responses(model, tok, eval_prompts, cfg.eval_samples, s.max_new_tokens, s.temperature,
                                 seed=cfg.seed + 777, batch_size=s.batch_size)
        kl = (sequence_logp(model, batch, s.temperature) - sequence_logp(ref, batch, s.temperature)) if ref is not model \
            else torch.zeros(len(batch.texts))
    ptexts = [eval_prompts[i] for i in batch.prompt_index]
    scores: dict[str, float] = {}  # the optional figures of EvalResult that can be measured here
    rows = [{"prompt_id": p.id, "prompt": p.text, "response": t} for p, t in zip(ptexts, batch.texts)]
    gold_spec = cfg.gold_spec()
    if gold_spec:
        gold = load_fn(gold_spec)
        g = list(gold(ptexts, batch.texts))
        scores["gold"] = sum(g) / len(g)
        for r, v in zip(rows, g):
            r["gold"] = v
        base_rows = [json.loads(x) for x in base_samples.read_text().splitlines() if x.strip()]
        if base_rows and str(policy) != str(base):
            wins = 0.0
            for r, b in zip(rows, base_rows):
                wins += 1.0 if r["gold"] > b["gold"] else 0.5 if r["gold"] == b["gold"] else 0.0
            scores["win_rate_vs_initial"] = wins / min(len(rows), len(base_rows))
    if rm_dir is not None:
        from rankloop.reward.model import RewardScorer

        sc = RewardScorer.from_pretrained(rm_dir)
        proxy = sc.score([p.text for p in ptexts], batch.texts).tolist()
        scores["proxy"] = sum(proxy) / len(proxy)
        for r, v in zip(rows, proxy):
            r["proxy"] = v
        base_rows = [json.loads(x) for x in base_samples.read_text().splitlines() if x.strip()]
        if base_rows:
            bp = sc.score([b["prompt"] for b in base_rows], [b["response"] for b in base_rows]).tolist()
            scores["proxy_initial"] = sum(bp) / len(bp)
    result = EvalResult(policy=str(policy), samples=len(batch.texts), kl_from_initial=float(kl.mean()),
                        response_tokens=float(batch.response_mask.sum(1).float().mean()),
                        eos_frac=float(batch.finished.float().mean()), **scores)
    write_jsonl(out.with_suffix(".samples.jsonl"), rows)
    write_json(out, result.record())
    return result


def build_gold_eval(cfg: LoopConfig, eval_prompts: list[Prompt], out: Path) -> GoldEvalResult:
    """Held-out rankings by the noise-free gold preference of the initial policy's K candidates:
    what the reward model's accuracy is measured against."""
    from rankloop.records import CandidateText, RankedExample, Ranking
    from rankloop.sampling import sample_candidates
    from rankloop.simulate import SimulatedLabeler

    gold = load_fn(cfg.gold_spec())  # type: ignore[arg-type]
    s = cfg.sampling
    cands = sample_candidates(cfg.policy, eval_prompts, cfg.k, max_new_tokens=s.max_new_tokens,
                              temperature=s.temperature, seed=cfg.seed + 4242, batch_size=s.batch_size,
                              policy_name="initial", round=0)
    judge = SimulatedLabeler("gold", 0.0, gold)
    by_prompt: dict[str, list[Candidate]] = {}
    for c in cands:
        by_prompt.setdefault(c.prompt_id, []).append(c)
    rows = []
    for p in eval_prompts:
        cs = by_prompt.get(p.id, [])
        if len(cs) < 2:
            continue
        order = judge.rank(p.text, [(c.id, c.text) for c in cs])
        if len(order) < 2:
            continue
        rows.append(RankedExample(prompt_id=p.id, prompt=p.text, candidates=[CandidateText(id=c.id, text=c.text)
                                                                             for c in cs],
                                  ranking=Ranking(prompt_id=p.id, order=order, labeler="gold")))
    write_rankings(out, rows)
    return GoldEvalResult(rankings=len(rows))


# ---------------------------------------------------------------- the loop


def run_loop(cfg: LoopConfig, timings: list[dict] | None = None) -> Path:
    """Run (or resume) every round; return the run directory (``read_rounds`` reads its results)."""
    run = Path(cfg.output)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / "loop_config.json")
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    timings = timings if timings is not None else []
    prompts = read_prompts(cfg.prompts)
    eval_prompts = read_prompts(cfg.eval_prompts) if cfg.eval_prompts else []
    if cfg.labeling.mode == "simulated" and not cfg.labeling.gold:
        raise ConfigError("simulated labeling needs labeling.gold")
    gold_spec = cfg.gold_spec()
    cfgd = cfg.model_dump()

    # 0. held-out material, once per run: the initial policy's samples and gold rankings
    rm_eval = Path(cfg.rm_eval_data) if cfg.rm_eval_data else None
    base_samples = run / "eval" / "initial.json"
    if eval_prompts:
        if rm_eval is None and gold_spec:
            rm_eval = run / "eval" / "gold_rankings.jsonl"
            run_stage("eval set: gold rankings of held-out candidates", rm_eval, GoldEvalResult,
                      {"k": cfg.k, "sampling": cfgd["sampling"], "gold": gold_spec, "seed": cfg.seed},
                      {"policy": cfg.policy, "prompts": cfg.eval_prompts},
                      lambda: build_gold_eval(cfg, eval_prompts, rm_eval), timings)
        run_stage("evaluate the initial policy", base_samples, EvalResult,
                  {"sampling": cfgd["sampling"], "eval_samples": cfg.eval_samples, "gold": gold_spec, "seed": cfg.seed},
                  {"policy": cfg.policy, "prompts": cfg.eval_prompts},
                  lambda: step_eval(cfg, cfg.policy, cfg.policy, None, eval_prompts, Path("/dev/null"), base_samples),
                  timings)
    base_samples_rows = base_samples.with_suffix(".samples.jsonl")

    # 0b. demonstrations → SFT (InstructGPT's step 1): the SFT model is then the policy's start and
    # the KL / DPO reference
    reference: str = cfg.policy
    if cfg.demonstrations.enabled:
        reference = run_demonstrations(cfg, prompts, eval_prompts, base_samples_rows, timings)

    policy: str = reference
    rankings_so_far: list[Path] = []
    prev_rm: Path | None = None
    for rnd in range(cfg.rounds):
        d = round_dir(run, rnd)
        d.path.mkdir(exist_ok=True)
        console.rule(f"round {rnd + 1} of {cfg.rounds}")

        # 1. sample K candidates per pool prompt from the current policy
        pool = _pool(prompts, cfg, rnd)
        write_jsonl(d.pool, pool)
        run_stage(f"round {rnd}: sample", d.candidates, SampleResult,
                  {"k": cfg.k, "sampling": cfgd["sampling"], "seed": cfg.seed}, {"policy": policy, "prompts": d.pool},
                  lambda: step_sample(cfg, policy, pool, rnd, d.candidates), timings)

        # 2. select the prompts that go to labelers
        run_stage(f"round {rnd}: select ({cfg.selection if prev_rm else 'random'})", d.selected, SelectResult,
                  {"selection": cfg.selection, "budget": cfg.prompts_per_round, "seed": cfg.seed},
                  {"candidates": d.candidates, "rm": prev_rm or "-", "labeled": [str(p) for p in rankings_so_far]},
                  lambda: step_select(cfg, rnd, pool, d.candidates, prev_rm, list(rankings_so_far), d.selected),
                  timings)

        # 3. label them (simulated or people) and export
        run_stage(f"round {rnd}: label ({cfg.labeling.mode})", d.rankings, LabelResult,
                  {"labeling": {k: v for k, v in cfgd["labeling"].items() if k not in ("admin_password", "password")},
                   "seed": cfg.seed},
                  {"selected": d.selected, "candidates": d.candidates},
                  lambda: step_label(cfg, rnd, read_prompts(d.selected), read_candidates(d.candidates), d.rankings),
                  timings)
        rankings_so_far.append(d.rankings)

        # 4. retrain the reward model on every ranking so far
        rows = [json.loads(x) for p in rankings_so_far for x in p.read_text().splitlines() if x.strip()]
        write_jsonl(d.rm_data, rows)
        backbone = cfg.reward_model or cfg.policy
        rm: Path | None = None
        if cfg.train_reward_model:
            rm = d.rm
            run_stage(f"round {rnd}: reward model", d.rm, RewardResult,
                      {"reward": cfg.reward.given(), "backbone": backbone},
                      {"data": d.rm_data, "eval": rm_eval or "-", "backbone": backbone},
                      lambda: step_reward(cfg, d.rm_data, rm_eval, d.rm), timings)

        # 5. the learner, from the current policy: PPO / RLOO / GRPO against the new reward model,
        # or DPO on every ranking so far
        ppo_prompts = run / "train_prompts.jsonl"
        write_jsonl(ppo_prompts, prompts)
        # The reference is an input only where it is not the initial policy: the records of runs
        # before there were demonstrations stay valid.
        ref_input = {} if reference == cfg.policy else {"reference": reference}
        if cfg.algorithm == "ppo":
            run_stage(f"round {rnd}: PPO", d.policy, PPOResult,
                      {"ppo": cfg.ppo.given(), "sampling": cfgd["sampling"], "seed": cfg.seed},
                      {"policy": policy, "rm": d.rm, "prompts": ppo_prompts, **ref_input},
                      lambda: step_ppo(cfg, policy, d.rm, ppo_prompts, d.policy, reference), timings)
        elif cfg.algorithm in ("rloo", "grpo"):
            a = cfg.algorithm
            run_stage(f"round {rnd}: {a.upper()}", d.policy, GroupResult,
                      {"algorithm": a, a: getattr(cfg, a).given(), "sampling": cfgd["sampling"], "seed": cfg.seed},
                      {"policy": policy, "rm": d.rm, "prompts": ppo_prompts, **ref_input},
                      lambda: step_group(cfg, a, policy, reference, d.rm, ppo_prompts, d.policy), timings)
        else:
            run_stage(f"round {rnd}: DPO", d.policy, DPOResult,
                      {"algorithm": "dpo", "dpo": cfg.dpo.given(), "seed": cfg.seed},
                      {"policy": policy, "data": d.rm_data, "eval": rm_eval or "-", **ref_input},
                      lambda: step_dpo(cfg, policy, reference, d.rm_data, rm_eval, d.policy), timings)

        # 6. evaluate on held-out prompts
        if eval_prompts:
            run_stage(f"round {rnd}: evaluate", d.eval, EvalResult,
                      {"sampling": cfgd["sampling"], "eval_samples": cfg.eval_samples, "gold": gold_spec},
                      {"policy": d.policy, "rm": rm or "-", "base": base_samples_rows, **ref_input},
                      lambda: step_eval(cfg, str(d.policy), reference, rm, eval_prompts, base_samples_rows, d.eval),
                      timings)
        policy, prev_rm = str(d.policy), rm

    write_json(run / "timings.json", timings)
    return run


def run_demonstrations(cfg: LoopConfig, prompts: list[Prompt], eval_prompts: list[Prompt], base_samples: Path,
                       timings: list[dict]) -> str:
    """Round 0 (InstructGPT's step 1): demonstrations collected through the labeling app (or read
    from ``demonstrations.data``), SFT of the initial policy on them, its evaluation. Returns the
    SFT model: the policy's start and the reference from then on. Artifacts in
    ``<run>/demonstrations/``."""
    run = Path(cfg.output)
    dm = cfg.demonstrations
    d = run / "demonstrations"
    d.mkdir(parents=True, exist_ok=True)
    demos = d / "demonstrations.jsonl"
    asked = prompts[:dm.prompts] if dm.prompts else list(prompts)
    dmd = dm.model_dump()
    dmd.pop("sft")
    if dm.data:
        run_stage("round 0: demonstrations (from file)", demos, DemonstrationResult, {"data": dm.data},
                  {"data": dm.data}, lambda: _copy_demonstrations(Path(dm.data), demos), timings)  # type: ignore[arg-type]
    else:
        write_jsonl(d / "prompts.jsonl", asked)
        run_stage(f"round 0: demonstrations ({dm.mode})", demos, DemonstrationResult,
                  {"demonstrations": dmd, "gold": cfg.labeling.gold, "seed": cfg.seed},
                  {"prompts": d / "prompts.jsonl"}, lambda: step_demonstrations(cfg, asked, demos), timings)
    sft = d / "policy"
    run_stage("round 0: SFT", sft, SFTResult, {"sft": dm.sft.given(), "seed": cfg.seed},
              {"model": cfg.policy, "data": demos}, lambda: step_sft(cfg, demos, sft), timings)
    if eval_prompts:
        out = run / "eval" / "sft.json"
        run_stage("round 0: evaluate the SFT policy", out, EvalResult,
                  {"sampling": cfg.model_dump()["sampling"], "eval_samples": cfg.eval_samples, "gold": cfg.gold_spec()},
                  {"policy": sft, "base": base_samples},
                  lambda: step_eval(cfg, str(sft), cfg.policy, None, eval_prompts, base_samples, out), timings)
    return str(sft)


def _copy_demonstrations(src: Path, out: Path) -> DemonstrationResult:
    from rankloop.sft.data import read_demonstrations

    rows = read_demonstrations(src)  # a bad row: a clear error naming the file and line, here, not in SFT
    out.write_bytes(src.read_bytes())
    return DemonstrationResult(source=str(src), demonstrations=len(rows), prompts=len({getattr(r, "prompt_id", i)
                                                                                      for i, r in enumerate(rows)}),
                               figures={})


def step_demonstrations(cfg: LoopConfig, prompts: list[Prompt], out: Path) -> DemonstrationResult:
    """Import the prompts into a demonstration project of the labeling app, get answers written
    (simulated demonstrators through its API, or people), review them, export the accepted ones.

    Through the demonstration API of the labeling client (``create_project(…,
    mode="demonstration")``, ``import_prompts``, ``next_task`` → ``kind: "demonstration"``,
    ``submit_demonstration``, ``demonstrations``, ``review_demonstration``, ``export(format="demonstrations")``)."""
    from fastapi.testclient import TestClient

    from rankloop.labeling.app import create_app
    from rankloop.labeling.client import LabelingClient

    dm, lab = cfg.demonstrations, cfg.labeling
    url = database_url(cfg)
    name = f"{dm.project_prefix}-demonstrations"
    admin_pw = lab.admin_password or os.environ.get("RANKLOOP_ADMIN_PASSWORD") or _admin_password(cfg)
    app = create_app(url, admin=(lab.admin_user, admin_pw))
    figures: dict[str, Any] = {}

    def load(admin: LabelingClient) -> int:
        existing = {p["name"]: p for p in admin.projects()}
        if name in existing:  # resumed: the project and its prompts are there already
            pid = existing[name]["id"]
            if admin.progress(pid)["items"] > 0:
                return pid
        else:
            pid = admin.create_project(name, mode="demonstration", overlap=dm.overlap,
                                       instructions="Write the answer you would want: kind and polite, about the "
                                       "asked topic, about 18 words, no repetition, finished sentences.")["id"]
        admin.import_prompts(pid, prompts)
        return pid

    def export(admin: LabelingClient, pid: int) -> int:
        text = admin.export(pid, format="demonstrations", include_pending=False)
        out.write_text(text if text.endswith("\n") or not text else text + "\n")
        return sum(1 for ln in text.splitlines() if ln.strip())

    if dm.mode == "simulated":
        from rankloop.corpus import write_answer
        from rankloop.simulate import SimulatedDemonstrator, demonstrate_project, review_demonstrations

        gold = load_fn(lab.gold)
        writers = [SimulatedDemonstrator(f"sim-demonstrator-{i}", dm.sigma, gold, write_answer, drafts=dm.drafts,
                                         seed=cfg.seed) for i in range(dm.demonstrators)]
        with TestClient(app) as http:
            admin = LabelingClient(http)
            admin.login(lab.admin_user, admin_pw)
            pid = load(admin)
            with _bar(cfg, "simulated demonstrations", admin.progress(pid)["slots"]) as (bar, task):
                figures.update(demonstrate_project(admin, pid, writers, lab.password,
                                                   on_submit=lambda: bar.advance(task)))
            figures.update(review_demonstrations(admin, pid, gold, dm.min_gold))
            n = export(admin, pid)
    else:
        def reviewed(admin: LabelingClient, pid: int, prog: dict) -> bool:
            return prog["slots_done"] >= prog["slots"] and not admin.demonstrations(pid, review="pending")

        with _human_session(cfg, app, admin_pw, name, load, ": write an answer to each prompt, then review them; the "
                            "loop continues when every answer is in and reviewed.", "waiting for demonstrations",
                            reviewed) as (admin, pid):
            n = export(admin, pid)
    if n == 0:
        raise RuntimeError(f"{name}: no accepted demonstrations to train SFT on")
    return DemonstrationResult(source=dm.mode, demonstrations=n, prompts=len(prompts), figures=figures)


def _pool(prompts: list[Prompt], cfg: LoopConfig, rnd: int) -> list[Prompt]:
    import random

    if cfg.pool_per_round is None or cfg.pool_per_round >= len(prompts):
        return list(prompts)
    rng = random.Random(cfg.seed * 7919 + rnd)
    return rng.sample(prompts, cfg.pool_per_round)
