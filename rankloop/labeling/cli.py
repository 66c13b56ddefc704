"""The ``rankloop labeling`` admin helpers (create users, projects, import from files).
``rankloop serve`` and ``rankloop export`` are in ``rankloop.cli.commands``.

Heavy imports happen inside the commands; nothing here imports torch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DB_HELP = "SQLAlchemy URL (default: $RANKLOOP_DATABASE_URL, else sqlite:///rankloop-labeling.db). Postgres: postgresql://user:pw@host/db"

labeling = typer.Typer(help="Admin helpers for the labeling app (work directly on its database).", no_args_is_help=True)


def _session(database_url: Optional[str]):
    from rankloop.labeling.db import make_engine, make_sessionmaker, resolve_url, upgrade

    url = resolve_url(database_url)
    upgrade(url)
    return make_sessionmaker(make_engine(url))()


@labeling.command("create-user")
def create_user(
    username: str,
    role: str = typer.Option("labeler", help="labeler or admin"),
    password: Optional[str] = typer.Option(None, envvar="RANKLOOP_NEW_PASSWORD", help="prompted for when not given"),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP),
) -> None:
    """Create a user (e.g. the first admin)."""
    from fastapi import HTTPException

    from rankloop.labeling.routes.users import create_user as make
    from rankloop.labeling.schemas import UserCreate

    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    body = UserCreate(username=username, password=password, role=role)
    with _session(database_url) as db:
        try:
            u = make(db, body.username, body.password, body.role)
        except HTTPException as e:
            typer.echo(f"error: {e.detail}", err=True)
            raise typer.Exit(2) from None
    typer.echo(f"created {u.role} {u.username!r} (id {u.id})")


@labeling.command("create-project")
def create_project(
    name: str,
    k: int = typer.Option(4), mode: str = typer.Option("ranking"), overlap: int = typer.Option(1),
    gold_rate: float = typer.Option(0.0), instructions: str = typer.Option(""),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP),
) -> None:
    """Create a project."""
    from rankloop.labeling.routes.projects import create_project as make
    from rankloop.labeling.schemas import ProjectCreate

    with _session(database_url) as db:
        p = make(db, ProjectCreate(name=name, k=k, mode=mode, overlap=overlap, gold_rate=gold_rate, instructions=instructions))
    typer.echo(f"created project {p.name!r} (id {p.id})")


@labeling.command("import")
def import_cmd(
    project: str = typer.Argument(..., help="project name or id"),
    candidates: Path = typer.Argument(..., help="candidates.jsonl from `rankloop sample`, or combined rows"),
    prompts: Optional[Path] = typer.Option(None, help="prompts.jsonl (with candidates.jsonl)"),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP),
) -> None:
    """Import prompts and candidates into a project."""
    from fastapi import HTTPException

    from rankloop.labeling.export import find_project
    from rankloop.labeling.importer import import_items, read_files

    from rankloop.labeling.export import ExportError

    with _session(database_url) as db:
        try:
            ps, cs, gold = read_files(candidates, prompts)
            out = import_items(db, find_project(db, project), ps, cs, gold)
        except HTTPException as e:
            typer.echo(f"error: {e.detail}", err=True)
            raise typer.Exit(2) from None
        except (OSError, ExportError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    typer.echo(out.model_dump_json())


@labeling.command("add-member")
def add_member_cmd(project: str, username: str, database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP)) -> None:
    """Give a labeler access to a project."""
    from rankloop.labeling.export import find_project
    from rankloop.labeling.routes.projects import add_member

    with _session(database_url) as db:
        add_member(db, find_project(db, project).id, username)
    typer.echo(f"{username} may now label {project}")


def register(app: typer.Typer) -> None:
    """``serve`` and ``export`` (built from their configs with the other commands, in
    ``rankloop.cli.commands``) and the ``labeling`` group."""
    from rankloop.cli.commands import register_labeling

    register_labeling(app)
    app.add_typer(labeling, name="labeling")
