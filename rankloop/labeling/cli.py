"""The ``rankloop labeling`` admin helpers (create users, projects, import from files).
``rankloop serve`` and ``rankloop export`` are in ``rankloop.cli.commands``.

Heavy imports happen inside the commands; nothing here imports torch."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

DB_HELP = "SQLAlchemy URL (default: $RANKLOOP_DATABASE_URL, else sqlite:///rankloop-labeling.db). Postgres: postgresql://user:pw@host/db"

labeling = typer.Typer(help="Admin helpers for the labeling app (work directly on its database).", no_args_is_help=True)


def _session(database_url: Optional[str]):
    from rankloop.labeling.db import make_engine, make_sessionmaker, resolve_url, upgrade

    url = resolve_url(database_url)
    upgrade(url)
    return make_sessionmaker(make_engine(url))()


@contextmanager
def _clear_errors() -> Iterator[None]:
    """An ordinary mistake (a duplicate name, an unknown user, a bad value, an unreadable file) is
    one line on stderr and exit code 2, not a traceback."""
    from rankloop.labeling.services import DomainError

    try:
        yield
    except (DomainError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@labeling.command("create-user")
def create_user(
    username: str,
    role: str = typer.Option("labeler", help="labeler, reviewer or admin"),
    password: Optional[str] = typer.Option(None, help="default: $RANKLOOP_NEW_PASSWORD, else prompted for"),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP),
) -> None:
    """Create a user (e.g. the first admin)."""
    from rankloop.labeling.schemas import UserCreate
    from rankloop.labeling.services import parse, users
    from rankloop.labeling.settings import LabelingSettings

    password = password or LabelingSettings().new_password
    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    with _clear_errors():
        body = parse(UserCreate, username=username, password=password, role=role)
        with _session(database_url) as db:
            u = users.create_user(db, body)
    typer.echo(f"created {u.role} {u.username!r} (id {u.id})")


@labeling.command("create-project")
def create_project(
    name: str,
    k: int = typer.Option(4), mode: str = typer.Option("ranking", help="ranking, pairwise or demonstration"),
    overlap: int = typer.Option(1),
    gold_rate: float = typer.Option(0.0), instructions: str = typer.Option(""),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP),
) -> None:
    """Create a project."""
    from rankloop.labeling.schemas import ProjectCreate
    from rankloop.labeling.services import parse, projects

    with _clear_errors():
        body = parse(ProjectCreate, name=name, k=k, mode=mode, overlap=overlap, gold_rate=gold_rate, instructions=instructions)
        with _session(database_url) as db:
            p = projects.create_project(db, body)
    typer.echo(f"created project {p.name!r} (id {p.id})")


@labeling.command("import")
def import_cmd(
    project: str = typer.Argument(..., help="project name or id"),
    candidates: Path = typer.Argument(..., help="candidates.jsonl from `rankloop sample`, or combined rows (for a "
                                      "demonstration project: prompts, with optional 'candidates' drafts)"),
    prompts: Optional[Path] = typer.Option(None, help="prompts.jsonl (with candidates.jsonl)"),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP),
) -> None:
    """Import prompts and candidates into a project."""
    from rankloop.labeling.importer import import_items, read_files
    from rankloop.labeling.services import projects

    with _clear_errors(), _session(database_url) as db:
        p = projects.find_project(db, project)
        ps, cs, gold = read_files(candidates, prompts, drafts_optional=p.mode == "demonstration")
        out = import_items(db, p, ps, cs, gold)
    typer.echo(out.model_dump_json())


@labeling.command("import-judgements")
def import_judgements_cmd(
    project: str = typer.Argument(..., help="project name or id"),
    file: Path = typer.Argument(..., help="JSONL of judgements: rankings, TRL pairs, HH-RLHF or pairwise (docs/labeling.md)"),
    format: str = typer.Option("auto", "--format", help="auto, rankings, trl, hh or pairwise"),
    rater_prefix: str = typer.Option("", help="put before every rater name (keeps two sources' raters apart)"),
    default_rater: str = typer.Option("imported", help="the rater of rows that name none"),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="skip bad rows (counted) instead of importing nothing"),
    open_slots: bool = typer.Option(False, "--open-slots", help="also open the project's overlap places on new items"),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP),
) -> None:
    """Import judgements made elsewhere (raters, times, strengths and repeats kept) into a project."""
    from rankloop.labeling.judgements import import_judgements
    from rankloop.labeling.services import projects

    with _clear_errors(), _session(database_url) as db:
        out = import_judgements(db, projects.find_project(db, project), file.read_bytes(), file.name, format,  # type: ignore[arg-type]
                                default_rater, rater_prefix, skip_invalid, open_slots)
    typer.echo(out.model_dump_json())


@labeling.command("add-member")
def add_member_cmd(project: str, username: str, database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP)) -> None:
    """Give a labeler access to a project."""
    from rankloop.labeling.services import projects

    with _clear_errors(), _session(database_url) as db:
        projects.add_member(db, projects.find_project(db, project).id, username)
    typer.echo(f"{username} may now label {project}")


# ---------------------------------------------------------------- lead tools: invite links


@labeling.command("invite")
def invite_cmd(
    project: str = typer.Argument(..., help="project name or id"),
    days: float = typer.Option(7.0, help="the link expires after this many days (at most 90)"),
    role: str = typer.Option("labeler", help="labeler or reviewer"),
    username: Optional[str] = typer.Option(None, help="preset the username (else the invitee chooses one)"),
    base_url: str = typer.Option("http://127.0.0.1:8000", "--base-url", help="the address people open the app at"),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP),
) -> None:
    """Make a one-time invite link for a project; prints it once (only its hash is stored)."""
    from rankloop.labeling.schemas import InviteCreate
    from rankloop.labeling.services import invites, parse, projects

    with _clear_errors():
        body = parse(InviteCreate, role=role, days=days, username=username)
        with _session(database_url) as db:
            made = invites.create_invite(db, projects.find_project(db, project), body, None)
    typer.echo(f"invite {made.id}: {made.role} in {project!r}, expires {made.expires_at:%Y-%m-%d %H:%M} UTC, works once:",
               err=True)
    typer.echo(base_url.rstrip("/") + made.path)


tokens = typer.Typer(help="Sessions and API tokens: create, list, revoke. (On the database: a running app "
                     "notices a revocation within its token cache's 30 s.)", no_args_is_help=True)
labeling.add_typer(tokens, name="tokens")


def _user_id(db, username: str) -> int:
    from rankloop.labeling.services import NotFound, users

    u = users.find_user(db, username)
    if u is None:
        raise NotFound(f"no user {username!r}")
    return u.id


@tokens.command("create")
def tokens_create(
    username: str,
    name: str = typer.Option("script", help="what the token is for (shown in lists)"),
    days: Optional[float] = typer.Option(None, help="lifetime (default $RANKLOOP_TOKEN_DAYS, 90; at most $RANKLOOP_TOKEN_MAX_DAYS, 365)"),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP),
) -> None:
    """Make an API token for a user's scripts; prints it once (only its hash is stored)."""
    from rankloop.labeling.services import auth
    from rankloop.labeling.settings import LabelingSettings

    s = LabelingSettings()
    with _clear_errors(), _session(database_url) as db:
        raw, row = auth.script_token(db, _user_id(db, username), name, days, s.token_days, s.token_max_days)
    typer.echo(f"token {row.id} for {username!r} ({name}), expires {row.expires_at:%Y-%m-%d %H:%M} UTC:", err=True)
    typer.echo(raw)


@tokens.command("list")
def tokens_list(
    user: Optional[str] = typer.Option(None, "--user", help="only this user's"),
    database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP),
) -> None:
    """Unexpired sessions and tokens: id, user, kind, name, created, expires (never the secrets)."""
    from rankloop.labeling.services import auth

    with _clear_errors(), _session(database_url) as db:
        rows = auth.list_tokens(db, _user_id(db, user) if user else None)
    typer.echo(f"{'id':>6}  {'user':<20} {'kind':<8} {'name':<20} {'created (UTC)':<17} expires (UTC)")
    for t in rows:
        typer.echo(f"{t.id:>6}  {t.username:<20} {t.kind:<8} {(t.name or ''):<20} {t.created_at:%Y-%m-%d %H:%M} "
                   f"{t.expires_at:%Y-%m-%d %H:%M}")


@tokens.command("revoke")
def tokens_revoke(token_id: int, database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP)) -> None:
    """Revoke one session or token (its id from `tokens list`)."""
    from rankloop.labeling.services import auth

    with _clear_errors(), _session(database_url) as db:
        row = auth.revoke_token(db, token_id)
    typer.echo(f"revoked token {row.id} ({row.kind} {row.name or ''})")


@tokens.command("revoke-all")
def tokens_revoke_all(username: str, database_url: Optional[str] = typer.Option(None, "--database-url", help=DB_HELP)) -> None:
    """Revoke every session and token of a user (log them out everywhere)."""
    from rankloop.labeling.services import auth

    with _clear_errors(), _session(database_url) as db:
        n = auth.revoke_all(db, _user_id(db, username))
    typer.echo(f"revoked {n} sessions and tokens of {username!r}")


def register(app: typer.Typer) -> None:
    """``serve`` and ``export`` (built from their configs with the other commands, in
    ``rankloop.cli.commands``) and the ``labeling`` group."""
    from rankloop.cli.commands import register_labeling

    register_labeling(app)
    app.add_typer(labeling, name="labeling")
