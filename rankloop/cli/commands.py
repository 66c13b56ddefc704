"""Every ``rankloop`` command, in the order of the pipeline, each built from its typed config
(``rankloop.cli.typed``): the flags, their help and their defaults are the config's fields.

What is written here per command is only what a config cannot say: the ``--help`` panels (which
fields go together), old flag spellings kept as aliases, and the few lines that run the stage and
turn its errors into exit codes. torch, transformers and the web app are imported inside the
commands, so ``rankloop --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import typer
from pydantic import Field, model_validator
from rich.console import Console

from rankloop.cli.typed import config_command, fail
from rankloop.config import Config
from rankloop.dpo.config import DPOConfig
from rankloop.io import DataError
from rankloop.records import AllBadPolicy, UnsafePolicy  # feedback (issue 15 item 1)
from rankloop.loop import LoopConfig
from rankloop.quickstart import QuickstartConfig
from rankloop.reward.eval_config import EvalConfig
from rankloop.reward.config import RewardTrainConfig
from rankloop.rl.config import GRPOConfig, PPOConfig, RLOOConfig
from rankloop.sample import SampleConfig
from rankloop.sft.config import SFTConfig

err = Console(stderr=True)

# ---------------------------------------------------------------- sample

SAMPLE_GROUPS = {
    "Inputs and outputs": ("model", "prompts", "output", "policy_name", "round"),
    "Sampling": ("k", "max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "stop_token_ids",
                 "seed", "max_prompt_tokens", "truncate_prompts"),
    "Hardware": ("batch_size", "device", "dtype"),
}


def sample(cfg: SampleConfig) -> None:
    """Write K sampled candidates per prompt (candidates.jsonl) for ranking."""
    import time

    from rankloop.sample import write_candidates
    from rankloop.sampling import PromptTooLongError

    t0 = time.perf_counter()
    try:
        n, prompts = write_candidates(cfg)
    except PromptTooLongError as e:
        fail(str(e))
    err.print(f"wrote {n} candidates for {prompts} prompts to {cfg.output} in {time.perf_counter() - t0:.1f}s",
              highlight=False)


# ---------------------------------------------------------------- labeling: serve, export

DATABASE_URL = ("SQLAlchemy URL (default: $RANKLOOP_DATABASE_URL, else sqlite:///rankloop-labeling.db). "
                "Postgres: postgresql://user:pw@host/db")


class ServeConfig(Config):
    """``rankloop serve``: every field can come from ``--config FILE.yaml`` or a flag."""

    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 for a team on the network).")
    port: int = Field(8000, ge=1, le=65535, description="Port to listen on.")
    workers: int = Field(1, ge=1, description="App processes (PostgreSQL only; SQLite is one process).")
    secure_cookies: bool = Field(False, description="Mark cookies Secure (serve behind HTTPS).")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = Field(
        "info", description="uvicorn's log level.")
    database_url: str | None = Field(None, description=DATABASE_URL)
    admin_user: str | None = Field(None, description="Create this admin if the database has no users.",
                                   json_schema_extra={"envvar": "RANKLOOP_ADMIN_USER"})
    admin_password: str | None = Field(None, description="Password of admin_user.",
                                       json_schema_extra={"envvar": "RANKLOOP_ADMIN_PASSWORD"})

    @model_validator(mode="after")
    def _admin(self) -> "ServeConfig":
        if self.admin_user and not self.admin_password:
            raise ValueError("admin_user needs admin_password (--admin-password or $RANKLOOP_ADMIN_PASSWORD)")
        return self


SERVE_GROUPS = {
    "Server": ("host", "port", "workers", "secure_cookies", "log_level"),
    "Database and admin": ("database_url", "admin_user", "admin_password"),
}


def serve(cfg: ServeConfig) -> None:
    """Start the labeling web app (FastAPI under uvicorn); migrations are applied at start."""
    import uvicorn

    from rankloop.labeling.db import is_sqlite, resolve_url

    url = resolve_url(cfg.database_url)
    if cfg.workers > 1 and is_sqlite(url):
        fail("SQLite serves from one process; use --workers 1, or PostgreSQL for more")
    shown = url.split("@")[-1] if "@" in url else url
    typer.echo(f"rankloop labeling on http://{cfg.host}:{cfg.port}  database: {shown}")
    # proxy_headers=False: uvicorn would believe X-Forwarded-For from any loopback peer; the app
    # reads it itself, from $RANKLOOP_TRUSTED_PROXIES only (docs/labeling.md, "Login throttling").
    run = dict(host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False, proxy_headers=False)
    if cfg.workers > 1:
        # Each worker process builds its app from the environment (app_from_env).
        os.environ["RANKLOOP_DATABASE_URL"] = url
        if cfg.admin_user:
            os.environ["RANKLOOP_ADMIN_USER"], os.environ["RANKLOOP_ADMIN_PASSWORD"] = \
                cfg.admin_user, cfg.admin_password or ""
        if cfg.secure_cookies:
            os.environ["RANKLOOP_SECURE_COOKIES"] = "1"
        from rankloop.labeling.db import upgrade

        upgrade(url)
        uvicorn.run("rankloop.labeling.app:app_from_env", factory=True, workers=cfg.workers, **run)
        return
    from rankloop.labeling.app import create_app

    admin = (cfg.admin_user, cfg.admin_password) if cfg.admin_user else None
    uvicorn.run(create_app(url, admin=admin, secure_cookies=cfg.secure_cookies), **run)


class ExportConfig(Config):
    """``rankloop export``: every field can come from ``--config FILE.yaml`` or a flag."""

    project: str = Field(description="Project name or id.")
    out: str = Field("rankings.jsonl", description="Raw per-labeler rankings (what train-rm reads).")
    trl: str | None = Field(None, description="Also write TRL comparisons (prompt/chosen/rejected, ties dropped).")
    database_url: str | None = Field(None, description=DATABASE_URL)
    min_agreement: float | None = Field(None, ge=0, le=1, description="Keep items whose labelers agree at least "
                                        "this much (pairwise).")
    min_gold_accuracy: float | None = Field(None, ge=0, le=1, description="Leave out labelers below this gold "
                                            "accuracy.")
    # demonstration projects (issue 12)
    demonstrations: str | None = Field(None, description="Write this demonstrations.jsonl (what train-sft --data "
                                       "reads) instead of rankings: the project's accepted demonstrations.")
    include_pending: bool = Field(False, description="With --demonstrations: also those not reviewed yet "
                                  "(rejected ones never).")
    include_superseded: bool = Field(False, description="Also write corrected rankings' earlier versions "
                                     "(marked current: false) to --out; TRL pairs stay current-only.")
    # ---- feedback (issue 15 item 1)
    ratings: str | None = Field(None, description="Also write per-candidate ratings.jsonl (Likert, acceptability, "
                                "labels, comments; what train-rm --ratings reads).")
    trl_all_bad: AllBadPolicy = Field("drop", description="TRL file: an all-bad ranking gives no pair (drop) or its "
                                      "pairs as ranked (keep).")
    trl_unsafe: UnsafePolicy = Field("never_chosen", description="TRL file: an unsafe candidate is never 'chosen' "
                                     "(never_chosen), or pairs as ranked (keep).")


EXPORT_GROUPS = {
    "Project and files": ("project", "out", "trl", "database_url"),
    "Filters": ("min_agreement", "min_gold_accuracy", "include_superseded"),
    "Demonstrations": ("demonstrations", "include_pending"),
    "Feedback": ("ratings", "trl_all_bad", "trl_unsafe"),
}


def export(cfg: ExportConfig) -> None:
    """Export a project's rankings (or, with --demonstrations, its demonstrations) from the labeling database."""
    from rankloop.labeling.db import resolve_url
    from rankloop.labeling.export import ExportError, export_demonstrations, export_project

    try:
        if cfg.demonstrations is not None:
            info = export_demonstrations(resolve_url(cfg.database_url), cfg.project, cfg.demonstrations, cfg.include_pending)
        else:
            info = export_project(resolve_url(cfg.database_url), cfg.project, cfg.out, cfg.trl, cfg.min_agreement,
                                  cfg.min_gold_accuracy, include_superseded=cfg.include_superseded, ratings_out=cfg.ratings,
                                  trl_all_bad=cfg.trl_all_bad, trl_unsafe=cfg.trl_unsafe)
    except ExportError as e:
        fail(str(e))
    typer.echo(json.dumps(info, indent=2, default=str))


# ---------------------------------------------------------------- reward model: train-rm, eval-rm

RM_GROUPS = {
    "Inputs and outputs": ("data", "model", "output", "eval_data", "format", "skip_invalid"),
    "Run length and batches": ("epochs", "max_steps", "batch_size", "grad_accum", "group_by_length", "seed"),
    "Optimiser": ("lr", "weight_decay", "scheduler", "warmup_steps", "max_grad_norm"),
    "Loss and normalisation": ("loss", "use_margin", "normalise_on", "normalise_max"),
    "Model": ("max_length", "freeze_layers", "lora", "lora_r", "lora_alpha", "lora_dropout", "disable_dropout",
              "pack", "share_prefix", "dtype", "precision", "gradient_checkpointing"),
    "Evaluation": ("eval_every", "eval_batch_size"),
    "Checkpoints and logging": ("save_every", "keep_checkpoints", "resume", "log_every", "tensorboard", "progress"),
    "Labelers' flags and ratings": ("all_bad", "unsafe", "ratings"),  # feedback (issue 15 item 1)
}


def _skip_hint(e: DataError, skip_invalid: bool) -> DataError:
    """A malformed row: say how to go on without it."""
    if skip_invalid or e.line is None:
        return e
    return DataError(e.path, e.line, f"{e.message} (pass --skip-invalid to skip and count bad rows)")


def _run_trainer(run, cfg) -> None:
    """A supervised trainer's run: a malformed row says how to skip it; a non-finite value exits 3."""
    from rankloop.runtime import NonFiniteError

    try:
        run(cfg)
    except DataError as e:
        raise _skip_hint(e, cfg.skip_invalid) from None
    except NonFiniteError as e:
        fail(str(e), code=3)


def train_rm(cfg: RewardTrainConfig) -> None:
    """Train a reward model on K-way rankings (or pairs): one forward per candidate, all pairs from its K scores."""
    from rankloop.reward.train import train_reward_model

    _run_trainer(train_reward_model, cfg)


EVAL_GROUPS = {
    "Inputs and outputs": ("model", "data", "output", "format", "skip_invalid", "raw"),
    "Scoring": ("batch_size", "max_length", "device"),
}


def eval_rm(cfg: EvalConfig) -> None:
    """Pairwise accuracy, exact-ranking accuracy, Kendall's tau, mean margin and score statistics."""
    from rankloop.reward.eval import evaluate_reward_model
    from rankloop.sample import resolve_device

    try:
        m = evaluate_reward_model(cfg.model, cfg.data, batch_size=cfg.batch_size, max_length=cfg.max_length,
                                  fmt=None if cfg.format == "auto" else cfg.format, skip_invalid=cfg.skip_invalid,
                                  normalise=not cfg.raw, device=resolve_device(cfg.device), output=cfg.output)
    except DataError as e:
        raise _skip_hint(e, cfg.skip_invalid) from None
    typer.echo(json.dumps(m, indent=2))


# ---------------------------------------------------------------- sft

SFT_GROUPS = {
    "Inputs and outputs": ("data", "model", "output", "eval_data", "format", "chat_template", "skip_invalid"),
    "Run length and batches": ("epochs", "max_steps", "batch_size", "grad_accum", "group_by_length", "seed"),
    "Optimiser": ("lr", "weight_decay", "scheduler", "warmup_steps", "max_grad_norm"),
    "Model": ("max_length", "freeze_layers", "lora", "lora_r", "lora_alpha", "lora_dropout", "pack", "dtype",
              "precision", "gradient_checkpointing", "logprob_chunk"),
    "Evaluation": ("eval_every", "eval_batch_size"),
    "Checkpoints and logging": ("save_every", "keep_checkpoints", "resume", "log_every", "tensorboard", "progress"),
}


def train_sft(cfg: SFTConfig) -> None:
    """Supervised fine-tuning on demonstrations: the loss on the response tokens only (assistant turns of conversations)."""
    from rankloop.sft.train import train_sft as run

    _run_trainer(run, cfg)


# ---------------------------------------------------------------- dpo

DPO_GROUPS = {
    "Inputs and outputs": ("data", "model", "output", "reference", "eval_data", "format", "skip_invalid"),
    "Loss": ("loss", "beta", "label_smoothing", "use_margin"),
    "Run length and batches": ("epochs", "max_steps", "batch_size", "grad_accum", "group_by_length", "seed"),
    "Optimiser": ("lr", "weight_decay", "scheduler", "warmup_steps", "max_grad_norm"),
    "Model": ("max_length", "freeze_layers", "lora", "lora_r", "lora_alpha", "lora_dropout", "disable_dropout",
              "pack", "share_prefix", "dtype", "precision", "gradient_checkpointing", "logprob_chunk"),
    "Evaluation": ("eval_every", "eval_batch_size", "kl_prompts", "kl_max_new_tokens"),
    "Checkpoints and logging": ("save_every", "keep_checkpoints", "resume", "log_every", "tensorboard", "progress"),
    "Labelers' flags": ("all_bad", "unsafe"),  # feedback (issue 15 item 1)
}


def train_dpo(cfg: DPOConfig) -> None:
    """DPO on K-way rankings (or pairs), no reward model: all C(K,2) pairs or the Plackett–Luce list from one tree forward per ranking."""
    from rankloop.dpo.train import train_dpo as run

    _run_trainer(run, cfg)


# ---------------------------------------------------------------- ppo

PPO_GROUPS = {  # the sections of PPOConfig
    "Inputs and outputs": ("policy", "reference", "reward", "reward_weights", "prompts", "output"),
    "Run length and data": ("iterations", "batch_size", "seed"),
    "Sampling (rollout)": ("max_new_tokens", "temperature", "stop_token_ids", "max_prompt_tokens",
                           "truncate_prompts", "generation_batch_size", "forward_batch_size", "old_logprobs", "pack"),
    "Reward": ("missing_eos_penalty", "reward_batch_size", "reward_normalise", "reward_clip"),
    "KL penalty": ("kl_coef", "kl_control", "kl_target", "kl_horizon", "kl_estimator"),
    "PPO": ("ppo_epochs", "minibatch_size", "grad_accum_steps", "learning_rate", "weight_decay", "adam_eps",
            "max_grad_norm", "clip_range", "clip_range_value", "vf_coef", "ent_coef", "gamma", "lam",
            "whiten_advantages", "target_approx_kl"),
    "Model": ("dtype", "freeze_layers", "lora", "lora_r", "lora_alpha", "critic", "value_head_std"),
    "Precision and memory": ("precision", "gradient_checkpointing", "logprob_chunk", "offload"),
    "Checkpoints and logging": ("save_every", "keep_checkpoints", "resume", "tensorboard", "progress"),
}


def _run_rl(run, cfg) -> None:
    """An RL learner's run: a non-finite value exits 3, a bad reward or prompt 2."""
    from rankloop.rl.rewards import RewardError
    from rankloop.runtime import NonFiniteError
    from rankloop.sampling import PromptTooLongError

    try:
        out = run(cfg)
    except NonFiniteError as e:
        fail(str(e), code=3)
    except (RewardError, PromptTooLongError) as e:
        fail(str(e))
    err.print(f"policy written to {out}", highlight=False)


def ppo(cfg: PPOConfig) -> None:
    """Fine-tune a policy with PPO under a per-token KL penalty against the frozen original."""
    from rankloop.rl.ppo import run_ppo

    _run_rl(run_ppo, cfg)


GROUP_GROUPS = {  # the sections of RLOOConfig and GRPOConfig
    "Inputs and outputs": ("policy", "reference", "reward", "reward_weights", "prompts", "output"),
    "Run length and data": ("iterations", "batch_size", "samples_per_prompt", "seed"),
    "Sampling (rollout)": PPO_GROUPS["Sampling (rollout)"],
    "Reward": PPO_GROUPS["Reward"],
    "KL": ("kl_coef", "kl_estimator"),
    "Update": ("advantage", "std_eps", "loss_aggregation", "epochs", "minibatch_size", "grad_accum_steps",
               "learning_rate", "weight_decay", "adam_eps", "max_grad_norm", "clip_range"),
    "Model": ("dtype", "freeze_layers", "lora", "lora_r", "lora_alpha"),
    "Precision and memory": PPO_GROUPS["Precision and memory"],
    "Checkpoints and logging": PPO_GROUPS["Checkpoints and logging"],
}
GROUP_ALIASES = {"samples_per_prompt": ("-k",), "learning_rate": ("--lr",), "reward_weights": ("--reward-weight",)}


def groups_of(cls) -> dict:
    """``GROUP_GROUPS`` with only the fields ``cls`` has (RLOO has no ``advantage``)."""
    return {title: tuple(n for n in names if n in cls.model_fields) for title, names in GROUP_GROUPS.items()}


def rloo(cfg: RLOOConfig) -> None:
    """Critic-free RL (Ahmadian et al. 2024): K samples per prompt, each one's baseline the others' mean reward."""
    from rankloop.rl.rloo import run_rloo

    _run_rl(run_rloo, cfg)


def grpo(cfg: GRPOConfig) -> None:
    """Critic-free RL (Shao et al. 2024): group-normalised advantages over K samples per prompt, the KL in the loss."""
    from rankloop.rl.grpo import run_grpo

    _run_rl(run_grpo, cfg)


# ---------------------------------------------------------------- quickstart, loop

QUICKSTART_GROUPS = {
    "Run": ("output", "tiny", "labelers", "port", "seed", "threads", "progress"),
    "Sizes": ("rounds", "train_prompts", "eval_prompts", "k", "ppo_iterations", "rm_epochs"),
    "Recipe": ("algorithm", "demonstrations", "demo_prompts", "sft_epochs", "compare_sft", "compare"),
}


def quickstart(cfg: QuickstartConfig) -> None:
    """InstructGPT's whole recipe on an embedded default, offline, on a CPU.

    Pre-train a small LM on a generated corpus (cached); simulated demonstrators write answers
    through the labeling app and SFT trains on them; then two rounds of: sample K=4 candidates from
    the latest policy, simulated labelers rank them through the app, train the reward model, PPO
    with adaptive KL (or --algorithm rloo|grpo|dpo); and a report (report.html + a summary table
    with the gold score per stage and round)."""
    from rankloop.quickstart import run_quickstart

    run_quickstart(cfg)


LOOP_GROUPS = {  # the nested sampling: and labeling: get a panel each
    "Inputs and outputs": ("output", "policy", "prompts", "eval_prompts", "reward_model"),
    "Rounds and selection": ("rounds", "k", "prompts_per_round", "pool_per_round", "selection", "seed"),
    "Evaluation": ("eval_samples", "gold", "rm_eval_data"),
    "Learner": ("algorithm", "train_reward_model"),  # its rloo:/grpo:/dpo: and demonstrations: get a panel each
    "Run": ("threads", "progress"),
}

# Fields of a loop YAML that name files; a relative one is looked up beside the YAML too.
LOOP_FILE_FIELDS = ("prompts", "eval_prompts", "rm_eval_data")


def resolve_loop_paths(data: dict, config_file: Path) -> dict:
    """A loop YAML's relative file paths, made to work from any directory: a path that does not
    exist from the working directory but does beside the YAML becomes that file's absolute path.
    Only the file's values are resolved; a path given as a flag is the user's, from where they are."""
    base = config_file.resolve().parent
    out = dict(data)
    for key in LOOP_FILE_FIELDS:
        v = out.get(key)
        if isinstance(v, str) and v and not Path(v).is_absolute() and not Path(v).exists() and (base / v).exists():
            out[key] = str(base / v)
    return out


def loop(cfg: LoopConfig,
         report: bool = typer.Option(True, "--report/--no-report", help="Write report.html at the end.")) -> None:
    """Iterated online RLHF on any model, round after round; re-running the same command resumes.

    Each round samples from the current policy, sends the items to labeling (simulated or people),
    retrains the reward model on all rankings so far and continues PPO from the latest policy.
    Every stage writes its artifact, so an interrupted loop resumes where it stopped."""
    from rankloop.loop import run_loop
    from rankloop.report import summarise, write_report

    run = run_loop(cfg)
    if report:
        write_report(run, summarise(run))


# ---------------------------------------------------------------- registration


def register_labeling(app: typer.Typer) -> None:
    """``serve`` and ``export`` (the ``labeling`` admin group is ``rankloop.labeling.cli``'s)."""
    config_command(app, "serve", ServeConfig, groups=SERVE_GROUPS)(serve)
    config_command(app, "export", ExportConfig, groups=EXPORT_GROUPS, aliases={"out": ("-o",)},
                   arguments=("project",))(export)


def register(app: typer.Typer) -> None:
    """Every command on ``app``, in the order of the pipeline (and of ``rankloop --help``)."""
    config_command(app, "sample", SampleConfig, groups=SAMPLE_GROUPS)(sample)
    register_labeling(app)
    config_command(app, "train-rm", RewardTrainConfig, groups=RM_GROUPS)(train_rm)
    config_command(app, "eval-rm", EvalConfig, groups=EVAL_GROUPS)(eval_rm)
    config_command(app, "train-sft", SFTConfig, groups=SFT_GROUPS)(train_sft)
    config_command(app, "train-dpo", DPOConfig, groups=DPO_GROUPS)(train_dpo)
    config_command(app, "ppo", PPOConfig, groups=PPO_GROUPS, aliases={"learning_rate": ("--lr",)})(ppo)
    config_command(app, "rloo", RLOOConfig, groups=groups_of(RLOOConfig), aliases=GROUP_ALIASES)(rloo)
    config_command(app, "grpo", GRPOConfig, groups=groups_of(GRPOConfig), aliases=GROUP_ALIASES)(grpo)
    config_command(app, "quickstart", QuickstartConfig, groups=QUICKSTART_GROUPS, aliases={"output": ("-o",)})(
        quickstart)
    config_command(app, "loop", LoopConfig, groups=LOOP_GROUPS, prepare=resolve_loop_paths,
                   aliases={"output": ("-o",), "labeling.mode": ("--labelers",)})(loop)
