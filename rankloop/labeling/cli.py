"""Commands of this stage (registered on the ``rankloop`` app by ``rankloop.cli``)."""

import typer


def register(app: typer.Typer) -> None:
    pass
