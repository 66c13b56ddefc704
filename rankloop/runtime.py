"""What every trainer shares: the accelerator, the run directory (atomic checkpoints, the latest
one, keep-N, RNG state, metrics that survive a resume), experiment trackers, the progress bar and
the non-finite guard.

A learner's loop uses it as

    acc = make_accelerator(trackers(out, tensorboard=cfg.tensorboard))
    run = RunDir(out, acc, prefix="iter", complete="state.json", keep=cfg.keep_checkpoints)
    start = 0 if (ckpt := run.latest() if cfg.resume else None) is None else <restore from ckpt>
    run.begin(resumed_at=start)      # fresh run: old checkpoints and metrics go; resume: rows past it go
    ...
    with tracking(acc):
        acc.log(metrics, step=it)    # → metrics.jsonl (and TensorBoard when installed)
    guard.last_good = run.save(it, write)   # write(tmp_dir) fills the checkpoint; renamed into place

Nothing here knows what is trained.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from accelerate.tracking import GeneralTracker

from rankloop.io import DataError

METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"


# ---------------------------------------------------------------- accelerator and trackers


def make_accelerator(log_with: list | None = None, project_dir: str | Path | None = None, cfg=None,
                     fsdp: bool = False):
    """accelerate's ``Accelerator``; several processes on a machine without a GPU (``torchrun`` /
    ``accelerate launch`` on CPU) run data-parallel over gloo.

    ``cfg`` (a trainer's config: ``dtype``, ``precision``) sets accelerate's ``mixed_precision``:
    under ``precision = "autocast"`` the prepared model's forward runs under autocast in ``dtype``
    (float16 with accelerate's dynamic loss scaling: its ``GradScaler`` in ``backward``, the
    optimizer step and ``clip_grad_norm_``); float32 or ``precision = "weights"`` leave it off.

    How the processes share the model (DDP, FSDP, DeepSpeed) is accelerate's launch setting — see
    ``distributed_mode`` below; ``fsdp`` says the caller's loop is FSDP-ready (a launch asking for
    FSDP is refused otherwise, rather than deadlocking in a main-process-only forward pass)."""
    import torch
    from accelerate import Accelerator

    from rankloop.config import ConfigError, mixed_precision

    if distributed_mode() == "fsdp" and not fsdp:
        raise ConfigError("FSDP launch (ACCELERATE_USE_FSDP), but this caller does not declare its loop FSDP-ready "
                          "(make_accelerator(..., fsdp=True); train-sft, train-rm, train-dpo, ppo, rloo and grpo do — "
                          "see docs/gpu.md): launch it without the FSDP accelerate config to run it data-parallel")
    if distributed_mode() == "deepspeed" and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        raise ConfigError("DeepSpeed ZeRO-3 is not supported by any rankloop command yet (it shards the parameters; "
                          "see docs/gpu.md): use ZeRO-2, or FSDP2 (examples/accelerate/fsdp2.yaml)")
    mp = "no" if cfg is None else mixed_precision(cfg.dtype, cfg.precision)
    if mp == "fp16" and not torch.cuda.is_available():
        # accelerate runs no float16 autocast (and no loss scaling) on CPU: it would silently train in float32
        raise ConfigError("dtype=float16 with precision='autocast' needs a CUDA GPU (accelerate has no float16 "
                          "autocast on CPU); use dtype=bfloat16 here")
    cpu_ddp = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState._shared_state.get("_mixed_precision", mp) != mp:
        # accelerate keeps one state per process and refuses another mixed_precision; one process may run
        # several trainers (the loop, the tests) with different dtypes. The process group is kept.
        AcceleratorState._reset_state()
    acc = Accelerator(cpu=cpu_ddp, log_with=log_with or None, mixed_precision=mp,
                      project_dir=str(project_dir) if project_dir is not None else None)
    if cpu_ddp and distributed_mode() == "fsdp":
        _fsdp_on_cpu(acc)
    return acc


# ---------------------------------------------------------------- distributed mode (DDP | FSDP2 | DeepSpeed)
# One setting for every command, accelerate's own: ``accelerate launch --config_file
# examples/accelerate/<fsdp2|zero2|zero3>.yaml rankloop <command> ...`` (or its environment variables,
# ACCELERATE_USE_FSDP=true FSDP_VERSION=2 ..., under torchrun). Without it: DDP. See docs/gpu.md.


def distributed_mode() -> str:
    """``ddp``, ``fsdp`` or ``deepspeed``: what the launch environment asks for (accelerate's variables)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    return "ddp"


def _fsdp_on_cpu(acc) -> None:
    """accelerate treats several CPU processes as plain multi-CPU DDP and ignores an FSDP plugin
    (accelerate 1.15 ``AcceleratorState``: FSDP is only chosen for GPU-like devices), while torch's
    FSDP2 (``fully_shard``) runs over gloo. So on CPU the state is switched to accelerate's own FSDP
    path, with the plugin built from the same environment a GPU launch reads: the code that runs on
    GPUs is the code the 2-process CPU tests run."""
    from accelerate import FullyShardedDataParallelPlugin
    from accelerate.utils import DistributedType

    plugin = FullyShardedDataParallelPlugin()  # from FSDP_* variables
    if plugin.fsdp_version != 2:
        from rankloop.config import ConfigError

        raise ConfigError("FSDP on CPU processes needs FSDP2 (fsdp_version: 2 / FSDP_VERSION=2); FSDP1 needs GPUs")
    from accelerate.state import PartialState

    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin
    # AcceleratorState copies PartialState's shared dict over its own whenever one is constructed
    # again (accelerate does so inside ``prepare``): the choice must live there too.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_fsdp(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def full_state_dict(acc, model) -> dict | None:
    """An FSDP model's whole weights on the main process (None elsewhere), on the CPU; every process
    must call it (each sharded tensor is all-gathered, in the same order everywhere). ``model`` may be
    a submodule of the prepared one (the trainers wrap the LM): torch's ``get_model_state_dict`` only
    gathers from the module FSDP was applied to, so the shards are gathered here tensor by tensor.
    Tied weights (one parameter under two names) stay one tensor, so ``save_pretrained`` sees the tie."""
    from torch.distributed.tensor import DTensor

    full: dict[int, object] = {}
    out = {}
    for name, t in model.state_dict(keep_vars=True).items():  # keep_vars: a tied weight is one object
        if id(t) not in full:
            full[id(t)] = (t.full_tensor() if isinstance(t, DTensor) else t).detach().cpu()
        out[name] = full[id(t)]
    return out if acc.is_main_process else None


@contextlib.contextmanager
def gathered(acc, prepared) -> Iterator[None]:
    """Under FSDP, the prepared module's weights whole for the block (``unshard`` … ``reshard``), so a
    forward pass may call the Hugging Face model inside it directly (evaluation, normalisation, the RL
    learners' decode loop) rather than through the prepared wrapper, whose forward hooks do the
    gathering otherwise. Every process must enter it (each unit's all-gather is collective); inside
    it nothing is collective, so processes may run different numbers of forward passes (each decodes
    its own rows). A no-op outside FSDP.

    Every FSDP unit under ``prepared`` is unsharded (torch's ``unshard`` is not recursive: with one
    unit per decoder layer, ``fsdp_transformer_layer_cls_to_wrap``, the layers are units of their
    own), and for the block no unit reshards after a forward pass that goes through its hooks (FSDP2
    keeps the parameters gathered when a group's ``post_forward_mesh_info`` is None, as for its
    root), so a hooked forward inside the block gathers nothing again. The prepared module is made
    FSDP's root first (torch's lazy initialisation), as its own first forward would."""
    if not is_fsdp(acc):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    if isinstance(prepared, FSDPModule):
        # FSDP2 makes root the first unit whose forward runs: a layer called first (the decode loop, before
        # any training step) would claim it, and the prepared module's own forward fail afterwards.
        prepared._get_fsdp_state()._lazy_init()
    units = [m for m in prepared.modules() if isinstance(m, FSDPModule)]
    kept = []
    for m in units:
        for group in m._get_fsdp_state()._fsdp_param_groups:
            kept.append((group, group.post_forward_mesh_info))
            group.post_forward_mesh_info = None
        m.unshard()
    try:
        yield
    finally:
        for group, info in kept:
            group.post_forward_mesh_info = info
        for m in units:
            m.reshard()


def check_fsdp_settings(acc, cfg) -> None:
    """What a run (supervised or RL) cannot do under FSDP yet, refused before any work: LoRA (the merged
    export deep-copies a sharded model; PPO's reference would be the sharded policy with its adapter
    off) and ``--resume`` (the optimiser state is sharded per process)."""
    if not is_fsdp(acc):
        return
    from rankloop.config import ConfigError

    if getattr(cfg, "lora", False):
        raise ConfigError("--lora under FSDP is not supported yet: LoRA's trainable weights are small, run it "
                          "data-parallel (without the FSDP accelerate config)")
    if getattr(cfg, "resume", False):
        raise ConfigError("--resume under FSDP is not supported yet (the optimiser state is sharded per process); "
                          "an FSDP run's final model is a loadable model directory: start a new run from it "
                          "(--model, or --policy for ppo/rloo/grpo)")


class JSONLTracker(GeneralTracker):
    """accelerate tracker writing each logged row as one JSON line (``metrics.jsonl``), opened and
    closed per row so a killed run leaves every row it logged. ``key`` names the row's step field;
    ``truncate(step)`` drops the rows a killed run logged past the checkpoint it resumes from."""

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: str | Path, key: str):
        super().__init__()
        self.path, self.key = Path(path), key

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict) -> None:  # the config is saved beside the run
        pass

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(values) + "\n")

    def truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        if step == 0:
            self.path.unlink()
            return
        keep = [ln for ln in self.path.read_text(encoding="utf-8").splitlines()
                if ln.strip() and json.loads(ln).get(self.key, 0) <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")


def trackers(out: str | Path, key: str, tensorboard: bool = True) -> list:
    """The run's trackers: ``metrics.jsonl`` always; TensorBoard (``out/tensorboard``) when asked
    for and installed — it is optional, so its absence is no error."""
    from accelerate.utils import is_tensorboard_available

    return [JSONLTracker(Path(out) / METRICS, key)] + (
        ["tensorboard"] if tensorboard and is_tensorboard_available() else [])


@contextlib.contextmanager
def tracking(acc, run_name: str = "tensorboard") -> Iterator[None]:
    """Start the accelerator's trackers (TensorBoard logs to ``project_dir/run_name``) and finish
    them however the block ends. (Not ``end_training``: that also destroys the process group, which
    a caller may still need — e.g. for the final save's barrier.)"""
    acc.init_trackers(run_name)
    try:
        yield
    finally:
        for t in acc.trackers:
            t.finish()
        acc.trackers.clear()


# ---------------------------------------------------------------- RNG state (one format)


def rng_state() -> dict:
    """Python's, NumPy's and torch's global generator states (CPU)."""
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ---------------------------------------------------------------- the run directory


def fsync_dir(path: Path) -> None:
    """Flush every file of ``path`` to disk (before a rename makes them visible)."""
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the complete directory ``tmp`` to ``target``, replacing what is there."""
    if target.exists():
        old = target.parent / f".old-{target.name}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def write_dir_atomically(target: Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` fills a temporary sibling of ``target``, which is flushed and renamed into
    place: a run killed at any moment leaves either the old directory or the new one, whole."""
    tmp = target.parent / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    fsync_dir(tmp)
    replace_dir(tmp, target)
    return target


class RunDir:
    """A trainer's output directory: ``checkpoints/<prefix>-NNN…`` (complete when ``complete``, a
    file written last, exists), ``metrics.jsonl`` and the trackers.

    Checkpoints are written by hand rather than with accelerate's ``save_state``: that writes the
    whole model (not only the trainable weights, nor a ``from_pretrained`` directory) and in place,
    so a run killed mid-write could leave a checkpoint that looks complete and is not.
    """

    def __init__(self, output: str | Path, acc, prefix: str, complete: str, keep: int, digits: int = 6):
        self.out = Path(output)
        self.checkpoints = self.out / CHECKPOINTS
        self.acc, self.prefix, self.complete, self.keep, self.digits = acc, prefix, complete, keep, digits

    def path(self, step: int) -> Path:
        return self.checkpoints / f"{self.prefix}-{step:0{self.digits}d}"

    def latest(self) -> Path | None:
        """The newest complete checkpoint (a temporary directory is never complete)."""
        if not self.checkpoints.exists():
            return None
        done = sorted(p for p in self.checkpoints.glob(f"{self.prefix}-*") if (p / self.complete).exists())
        return done[-1] if done else None

    def resume_point(self, resume: bool, console) -> Path | None:
        """The checkpoint a run starts from: the latest with ``resume`` (None, said on ``console``,
        when there is none), else None — and a fresh run into a directory holding an earlier run's
        checkpoints is refused rather than overwriting them."""
        from rankloop.config import ConfigError

        latest = self.latest()
        if not resume and latest is not None:
            raise ConfigError(f"{self.checkpoints} holds checkpoints of an earlier run: pass --resume to continue "
                              "it, or choose another --output")
        if resume and latest is None:
            console.print(f"[yellow]--resume: no complete checkpoint in {self.checkpoints}; starting from the "
                          "beginning[/]")
        return latest if resume else None

    def begin(self, resumed_at: int) -> None:
        """Before the first step: a fresh run (``resumed_at == 0``) removes an earlier run's
        checkpoints and metrics; a resumed one drops the metrics rows logged past its checkpoint.
        Leftover temporary directories of a killed write go either way."""
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            if resumed_at == 0:
                shutil.rmtree(self.checkpoints, ignore_errors=True)
            elif self.checkpoints.exists():
                for stale in self.checkpoints.glob(".tmp-*"):
                    shutil.rmtree(stale, ignore_errors=True)
            for t in self.acc.log_with or []:  # (the trackers start later, in ``tracking``)
                if isinstance(t, JSONLTracker):
                    t.truncate(resumed_at)
        self.acc.wait_for_everyone()

    def save(self, step: int, write: Callable[[Path], Any]) -> Path:
        """Checkpoint ``step`` atomically (main process writes, all wait), keeping the newest ``keep``."""
        final = self.path(step)
        if self.acc.is_main_process:
            write_dir_atomically(final, write)
            for old in sorted(p for p in self.checkpoints.glob(f"{self.prefix}-*") if p.is_dir())[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()
        return final


# ---------------------------------------------------------------- one optimiser step over micro-batches


def optimizer_step(acc, model, micro_batches: list[Callable[[], Any]], sums, optimizer, scheduler, params: list,
                   max_grad_norm: float | None, guard: "FiniteGuard", step: int):
    """One optimiser step of a supervised learner (train-rm, train-sft, train-dpo): each micro-batch's forward
    and backward (``micro_batches[m]()`` returns its (S,) sums, whose first entry is its loss sum),
    DDP's gradient sync only on the last; a non-finite loss stops the run before the update; then
    clipping, the update and the schedule. ``sums`` accumulates the micro-batches' sums in place.
    Returns the gradient norm before clipping (None without clipping)."""
    for m, run_micro in enumerate(micro_batches):
        last = m == len(micro_batches) - 1
        with acc.no_sync(model) if (not last and acc.num_processes > 1) else contextlib.nullcontext():
            micro = run_micro()
        guard.check(micro[0], "loss", step + 1, "forward")
        sums += micro
    grad_norm = acc.clip_grad_norm_(params, max_grad_norm) if max_grad_norm is not None else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


# ---------------------------------------------------------------- progress and the non-finite guard


def progress_bar(name: str, enabled: bool, console=None):
    """A rich progress bar (``with bar: task = bar.add_task(...)``), shown on the main process
    only when ``enabled``: name, bar, n/N, time left and an info field."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn(name), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[info]}"), console=console, disable=not enabled)


class NonFiniteError(FloatingPointError):
    """NaN/inf in logits, rewards, values or the loss; names the step and the last good checkpoint."""


class FiniteGuard:
    """Stops a run at the first NaN/inf, naming where it happened and the last checkpoint written
    (which is intact: a checkpoint is only written from finite weights)."""

    def __init__(self, unit: str):
        self.unit = unit  # "iteration" or "step"
        self.last_good: Path | None = None

    def error(self, what: str, at: int, step: str) -> NonFiniteError:
        where = str(self.last_good) if self.last_good is not None else "none (no checkpoint written yet)"
        return NonFiniteError(f"non-finite {what} at {self.unit} {at}, step '{step}'; stopped. "
                              f"Last good checkpoint: {where} (intact; resume with --resume after fixing the cause)")

    def check(self, tensor, what: str, at: int, step: str) -> None:
        import torch

        if not torch.isfinite(tensor).all():
            raise self.error(what, at, step)


# ---------------------------------------------------------------- supervised trainers (train-rm, train-sft, train-dpo)
# The data order as a pure function of (seed, epoch, step), the model / optimiser / schedule with
# their resume, and checkpoints that are loadable model directories.

TRAINER_STATE = "trainer_state.pt"  # in a checkpoint directory: what --resume restores


def open_supervised_run(cfg, fsdp: bool = False):
    """A supervised trainer's accelerator (metrics by ``step``), stderr console (quiet but on the main
    process), run directory of ``step-NNNNNNNN`` checkpoints and non-finite guard. ``fsdp``: the
    trainer's loop is FSDP-ready (see ``make_accelerator``)."""
    from rich.console import Console

    acc = make_accelerator(trackers(cfg.output, "step", cfg.tensorboard), cfg.output, cfg, fsdp=fsdp)
    check_fsdp_settings(acc, cfg)
    console = Console(stderr=True, quiet=not acc.is_main_process)
    run = RunDir(cfg.output, acc, prefix="step", complete=TRAINER_STATE, keep=cfg.keep_checkpoints, digits=8)
    return acc, console, run, FiniteGuard("step")


def epoch_batches(lengths: list[int], epoch: int, seed: int, global_batch: int, group_by_length: bool,
                  min_size: int = 1) -> list[list[int]]:
    """The global batches (lists of ranking indices) of one epoch: a pure function of its arguments.

    With ``group_by_length`` the shuffled order is cut into windows of 50 batches, each sorted
    (stably) by length bucket of 32 tokens, so a batch pads to similar lengths while rankings of
    similar length still meet different neighbours every epoch; the batch order is then shuffled
    again. A last
    batch smaller than ``min_size`` (one ranking per process and micro-batch) is dropped.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = global_batch * 50
        order = [i for w in range(0, len(order), window)
                 for i in sorted(order[w : w + window], key=lambda i: lengths[i] // 32)]
    batches = [order[s : s + global_batch] for s in range(0, len(order), global_batch)]
    if batches and len(batches[-1]) < min_size:
        batches.pop()
    if group_by_length:
        rng.shuffle(batches)
    return batches


def split_batch(batch: list[int], parts: int) -> list[list[int]]:
    """Cut a global batch into ``parts`` near-equal consecutive chunks (part i = micro m·W + rank)."""
    n = len(batch)
    return [batch[i * n // parts : (i + 1) * n // parts] for i in range(parts)]


class StepPlan(NamedTuple):
    """How the data is cut into optimiser steps: a pure function of (seed, epoch, step)."""

    global_batch: int  # rankings per optimiser step: batch_size × grad_accum × processes
    steps_per_epoch: int
    total_steps: int
    lengths: list[int]  # longest candidate of each training ranking (tokens)


def plan_steps(cfg, lengths: list[int], world: int, what: str) -> StepPlan:
    """Optimiser steps of ``batch_size × grad_accum × world`` examples (``what``: "rankings",
    "demonstrations") over ``epochs`` or ``max_steps``; too few examples for one step is a ``DataError``."""
    accum = cfg.grad_accum
    global_batch = cfg.batch_size * accum * world
    steps_per_epoch = len(epoch_batches(lengths, 0, cfg.seed, global_batch, cfg.group_by_length, world * accum))
    if steps_per_epoch == 0:
        raise DataError(cfg.data, None,
                        f"{len(lengths)} {what} are too few for {world} process(es) × {accum} micro-batches")
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    return StepPlan(global_batch, steps_per_epoch, total_steps, lengths)


class EpochCache:
    """The global batches of the current epoch, computed once per epoch."""

    def __init__(self, cfg, plan: StepPlan, world: int):
        self.cfg, self.plan, self.min_size = cfg, plan, world * cfg.grad_accum
        self.epoch, self.batches = -1, []

    def of(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.plan.steps_per_epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches = epoch_batches(self.plan.lengths, epoch, self.cfg.seed, self.plan.global_batch,
                                         self.cfg.group_by_length, self.min_size)
        return self.batches[pos]


def build_training(cfg, tokenizer, plan: StepPlan, resume_from: Path | None, console, build):
    """The model (``build(cfg, tokenizer, weights_from)``), AdamW and the schedule — restored from
    ``resume_from`` with the RNG — and the first step."""
    import torch
    from transformers import get_scheduler

    from rankloop.models import adamw

    state = torch.load(resume_from / TRAINER_STATE, map_location="cpu", weights_only=False) if resume_from else None
    # Full fine-tuning resumes from the checkpoint's own weights; LoRA from the base + adapter state.
    model = build(cfg, tokenizer, weights_from=str(resume_from) if state is not None and not cfg.lora else None)
    if state is not None and cfg.lora:
        model.load_state_dict(state["trainable"], strict=False)
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(cfg.scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                              num_training_steps=plan.total_steps)
    start = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start = state["step"]
        console.print(f"resumed from {resume_from} at step {start}")
    return model, optimizer, scheduler, start


def exportable(model):
    """The plain transformers model to save: LoRA merged into a copy, so training can go on."""
    import copy

    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


def write_model_dir(tmp: Path, model, tokenizer, extra: dict[str, object], state_dict: dict | None = None) -> None:
    """A ``from_pretrained`` directory (LoRA merged into a copy) plus ``extra`` files: ``*.pt``
    through ``torch.save``, configs as JSON. ``state_dict``: the weights gathered from an FSDP
    model's shards (``full_state_dict``), written instead of the model's own."""
    import torch

    from rankloop.config import save_config
    from rankloop.io import write_json

    if state_dict is not None:
        model.save_pretrained(tmp, state_dict=state_dict)
    else:
        exportable(model).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    for name, obj in extra.items():
        if name.endswith(".pt"):
            torch.save(obj, tmp / name)
        elif hasattr(obj, "model_dump_json"):
            save_config(obj, tmp / name)
        else:
            write_json(tmp / name, obj)


def save_checkpoint(run: RunDir, model, optimizer, scheduler, tok, cfg, step: int, guard: FiniteGuard) -> Path:
    """A loadable model directory (LoRA merged) plus ``trainer_state.pt`` for ``--resume``; refused
    (naming the weight) if any weight is non-finite, so the last good checkpoint stays last.
    Under FSDP every process calls it (the weights are gathered onto the main process) and the
    optimiser state is not saved (``--resume`` is refused there, see ``check_fsdp_settings``)."""
    if is_fsdp(run.acc):
        return _save_fsdp_checkpoint(run, model, scheduler, tok, cfg, step, guard)
    for name, p in model.named_parameters():
        guard.check(p, f"weights ({name})", step, "checkpoint")
    opt = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer  # under accelerate: the wrapped one
    trainer_state = {
        "step": step, "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
        "trainable": {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad} if cfg.lora else None,
    }
    return run.save(step, lambda tmp: write_model_dir(tmp, model, tok, {"train_config.json": cfg,
                                                                       TRAINER_STATE: trainer_state}))


def _save_fsdp_checkpoint(run: RunDir, model, scheduler, tok, cfg, step: int, guard: FiniteGuard) -> Path:
    sd = full_state_dict(run.acc, model)  # every process: the gather is collective
    if sd is not None:
        for name, p in sd.items():
            guard.check(p, f"weights ({name})", step, "checkpoint")
    trainer_state = {"step": step, "optimizer": None, "scheduler": scheduler.state_dict(), "rng": rng_state(),
                     "trainable": None, "fsdp": True}
    return run.save(step, lambda tmp: write_model_dir(tmp, model, tok, {"train_config.json": cfg,
                                                                       TRAINER_STATE: trainer_state}, state_dict=sd))


def save_final(model, tok, out: Path, extra: dict, state_dict: dict | None = None) -> Path:
    """The final model files into ``out`` itself (beside metrics.jsonl and checkpoints/), each file
    replaced atomically: the model is written whole to a temporary sibling directory first.
    ``state_dict``: an FSDP model's gathered weights (``full_state_dict``, called on every process)."""
    tmp = write_dir_atomically(out / ".final", lambda d: write_model_dir(d, model, tok, extra, state_dict))
    for f in tmp.iterdir():
        os.replace(f, out / f.name)
    tmp.rmdir()
    return out
