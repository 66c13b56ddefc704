"""The ``rankloop`` command line: one command per pipeline stage, each built from its typed config
(``rankloop.cli.typed``; the commands are in ``rankloop.cli.commands``). Heavy imports (torch,
transformers, the web app) happen inside the commands so ``--help`` stays fast."""

from __future__ import annotations

import typer

from rankloop.cli import commands
from rankloop.labeling.cli import labeling

app = typer.Typer(
    name="rankloop",
    help="RLHF end to end: sample K candidates, collect human rankings, train a reward model, "
    "fine-tune with PPO under a KL penalty, and loop. Every command takes --config FILE.yaml "
    "with its settings; the flags given override the file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
commands.register(app)
app.add_typer(labeling, name="labeling")


def main() -> None:
    """The console script (``rankloop``; ``python -m rankloop.cli`` runs it too)."""
    try:
        app()
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Under a multi-process launch, destroy the process group before the interpreter exits. Left to
    the exit's destructors, gloo's worker threads could be torn down still joinable and abort the
    process ("terminate called without an active exception", exit -6) after its work was done.
    Local, not collective: each process closes its own."""
    import sys

    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
