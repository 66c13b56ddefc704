"""The ``rankloop`` command line. Each pipeline stage registers its own commands; heavy imports
(torch, transformers) happen inside the commands so ``--help`` stays fast."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

app = typer.Typer(
    name="rankloop",
    help="RLHF end to end: sample K candidates, collect human rankings, train a reward model, "
    "fine-tune with PPO under a KL penalty, and loop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# The order here is the order of the pipeline, and of `rankloop --help`.
STAGES = (
    "rankloop.rl.cli_sample",     # sample
    "rankloop.labeling.cli",      # serve, export
    "rankloop.sft.cli",           # train-sft
    "rankloop.reward.cli",        # train-rm, eval-rm
    "rankloop.rl.cli",            # ppo
    "rankloop.loop_cli",          # loop, quickstart
)
for _name in STAGES:
    importlib.import_module(_name).register(app)

err = Console(stderr=True)


def main() -> None:
    from rankloop.config import ConfigError
    from rankloop.io import DataError

    try:
        app()
    except (DataError, ConfigError) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
