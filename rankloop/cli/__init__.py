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
    app()
