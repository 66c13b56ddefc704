"""A typer command built from a pydantic ``Config``: every field a flag, plus ``--config FILE.yaml``.

    @config_command(app, "ppo", PPOConfig, groups=PPO_GROUPS, aliases={"learning_rate": ("--lr",)})
    def ppo(cfg: PPOConfig) -> None:
        '''Fine-tune a policy with PPO under a per-token KL penalty against the frozen original.'''
        run_ppo(cfg)

Each field becomes ``--field-name`` — ``--x/--no-x`` for a bool, the choices for a ``Literal``, a
comma-separated or repeated flag for a list, ``KEY=VALUE`` (repeated) for a dict, and
``--outer-inner`` for each field of a nested config — with the field's ``description`` as its help,
its default shown, in the ``--help`` panel its group names. The config is the YAML file, then the
flags the user gave on top (a flag left out leaves the file's value or the default), validated
once by pydantic: a value from a flag meets the same constraints (``ge=1``, the ``Literal``) and
the same error format as one from the file, and a bad one is a single ``error:`` line, exit 2,
that names the flag or the file. That is why flag values reach the config as text: click's own
type checks would be a second, multi-line error path that knows none of the constraints.
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, TypeVar, Union

import typer
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from rich.console import Console
from rich.markup import escape

from rankloop.config import ConfigError, Loc, merge_config, read_config_file, validate_config
from rankloop.io import DataError

C = TypeVar("C", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])

Kind = Literal["bool", "value", "list", "one_or_list", "dict", "model"]
OTHER = "Other settings"
_NONE = {"none", "null"}
_TEXT = (str, Path)
_METAVAR = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}
_CTX, _FILE = "ctx_", "config_file_"  # the generated command's own parameters
_KW = inspect.Parameter.KEYWORD_ONLY


def _given(source: Any) -> bool:
    """The user set this parameter (flag or environment variable), rather than click's default."""
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _identity(value: Any) -> Any:
    return value


def _shape(annotation: Any) -> tuple[Kind, Any, bool]:
    """(kind, inner type, whether None is allowed) of a field's annotation. A list's inner type is
    its element's."""
    optional = False
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = typing.get_args(annotation)
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        lists = [a for a in rest if typing.get_origin(a) is list]
        if len(rest) == 2 and len(lists) == 1 and typing.get_args(lists[0]) == tuple(a for a in rest if a not in lists):
            return "one_or_list", typing.get_args(lists[0])[0], optional  # ``T | list[T]``: one value, or several
        annotation = rest[0] if len(rest) == 1 else Any
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "bool", bool, optional
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation, optional
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence):
        return "list", (typing.get_args(annotation) or (Any,))[0], optional
    if origin is dict or annotation is dict:
        return "dict", annotation, optional
    return "value", annotation, optional


def _is_text(inner: Any) -> bool:
    """Values pydantic reads from text as they are: str, Path, numbers, Literals of strings."""
    if typing.get_origin(inner) is Literal:
        return all(isinstance(a, str) for a in typing.get_args(inner))
    return inner in (*_TEXT, int, float)


def _metavar(inner: Any) -> str:
    if typing.get_origin(inner) is Literal:
        return "[" + "|".join(map(str, typing.get_args(inner))) + "]"
    return _METAVAR.get(inner, "VALUE")


def _parse_scalar(text: str, inner: Any, optional: bool) -> Any:
    if optional and text.strip().lower() in _NONE and inner not in _TEXT:
        return None
    return text if _is_text(inner) else yaml.safe_load(text)


@dataclass(frozen=True)
class Flag:
    """One config field on the command line."""

    loc: Loc                 # where the value goes in the config: ("labeling", "mode")
    param: str               # the Python parameter name typer sees: "labeling__mode"
    names: tuple[str, ...]   # ("--labeling-mode", "--labelers")
    kind: Kind
    inner: Any               # the field's type without Optional (a list's: its element type)
    optional: bool
    field: FieldInfo
    panel: str
    argument: bool = False   # positional (e.g. export's PROJECT), still settable from the file

    @property
    def label(self) -> str:
        """How errors name the flag."""
        return self.loc[-1].upper() if self.argument else "/".join(n for n in self.names if n.startswith("--"))

    @property
    def required(self) -> bool:
        return self.field.is_required()

    def value(self, raw: Any) -> Any:
        """The command line's value as the data pydantic validates."""
        if self.kind == "bool" or raw is None:
            return raw
        if self.kind == "value":
            return _parse_scalar(raw, self.inner, self.optional)
        if self.kind in ("list", "one_or_list"):
            items = [s.strip() for r in raw for s in str(r).split(",") if s.strip()]
            if self.optional and len(items) == 1 and items[0].lower() in _NONE:
                return None
            values = [_parse_scalar(s, self.inner, False) for s in items]
            return values[0] if self.kind == "one_or_list" and len(values) == 1 else values
        out = {}  # dict: KEY=VALUE, each VALUE read as YAML (numbers, booleans, null)
        for item in raw:
            key, eq, text = str(item).partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"{self.label}: expected KEY=VALUE, got {item!r}")
            out[key.strip()] = yaml.safe_load(text)
        return out

    def _help(self) -> str:
        text = (self.field.description or "").strip()
        if self.kind in ("list", "one_or_list"):
            text += " Comma-separated or repeated."
        elif self.kind == "dict":
            text += " KEY=VALUE, repeated; merged into the file's mapping."
        if self.optional and self.kind in ("value", "list", "one_or_list") and self.inner not in _TEXT \
                and self.field.default is not None:
            text += " Accepts 'none'."
        if self.required:
            text += " Required: this or the field in --config."
        return escape(text)

    def _default(self) -> tuple[Any, bool | str]:
        """(click's default, what ``--help`` shows of it). Click's default is only shown: the
        config's own default applies whenever a flag is not given."""
        d = self.field.default
        if d is PydanticUndefined or self.field.default_factory is not None or d is None or self.kind == "dict":
            return None, False
        if self.kind == "list":
            return None, ",".join(map(str, d))
        return d, True

    def parameter(self) -> inspect.Parameter:
        """The typer parameter: its annotation and its ``typer.Option`` / ``typer.Argument``."""
        default, shown = self._default()
        common = dict(help=self._help(), rich_help_panel=self.panel, show_default=shown)
        extra = self.field.json_schema_extra if isinstance(self.field.json_schema_extra, dict) else {}
        if self.argument:  # in typer's own "Arguments" panel, above the options
            info = typer.Argument(None, metavar=self.loc[-1].upper(), parser=_identity, help=self._help(),
                                  show_default=False)
            return inspect.Parameter(self.param, _KW, annotation=Optional[str], default=info)
        if self.kind == "bool":
            first, *more = self.names
            info = typer.Option(default, f"{first}/--no-{first[2:]}", *more, envvar=extra.get("envvar"), **common)
            return inspect.Parameter(self.param, _KW, annotation=Optional[bool], default=info)
        many = self.kind in ("list", "one_or_list", "dict")
        metavar = "KEY=VALUE" if self.kind == "dict" else _metavar(self.inner)
        info = typer.Option(default, *self.names, parser=_identity, metavar=metavar, envvar=extra.get("envvar"),
                            **common)
        return inspect.Parameter(self.param, _KW, annotation=Optional[list[str]] if many else Optional[str],
                                 default=info)


def config_flags(cls: type[BaseModel], groups: Mapping[str, Sequence[str]] | None = None,
                 aliases: Mapping[str, Sequence[str]] | None = None, arguments: Sequence[str] = (),
                 prefix: Loc = (), panel: str | None = None) -> list[Flag]:
    """A ``Flag`` for every field of ``cls`` (recursively into nested configs), in field order.

    ``groups`` maps a ``--help`` panel title to the (top-level) field names shown in it; a field
    in none is shown under "Other settings", and a nested config's fields in a panel of their
    own, titled by the field holding them. ``aliases`` maps a dotted field name to more flag
    spellings (``{"learning_rate": ("--lr",)}``); ``arguments`` names fields taken positionally.
    """
    panel_of = {name: title for title, names in (groups or {}).items() for name in names}
    aliases = aliases or {}
    flags: list[Flag] = []
    for name, field in cls.model_fields.items():
        loc = (*prefix, name)
        kind, inner, optional = _shape(field.annotation)
        if kind == "model":
            title = panel or f"{name}: {(field.description or name).rstrip('.')}"
            flags += config_flags(inner, aliases={k[len(name) + 1:]: v for k, v in aliases.items()
                                                  if k.startswith(name + ".")},
                                  prefix=loc, panel=title)
            continue
        where = panel or panel_of.get(name)
        names = ("--" + "-".join(p.replace("_", "-") for p in loc), *aliases.get(".".join(loc[len(prefix):]), ()))
        flags.append(Flag(loc, "__".join(loc), names, kind, inner, optional, field, where or OTHER,
                          argument=not prefix and name in arguments))
    return flags


def build_config(cls: type[C], path: str | Path | None, overrides: Mapping[str, Any],
                 flags: Mapping[Loc, str] | None = None, hints: Mapping[Loc, str] | None = None,
                 prepare: Callable[[dict, Path], dict] | None = None) -> C:
    """The file's fields (after ``prepare(data, path)``, e.g. resolving relative paths against the
    file's folder), the overrides merged on top, validated (see ``rankloop.config.validate_config``)."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_config_file(path)
        if prepare is not None:
            data = prepare(data, Path(path))
    return validate_config(cls, merge_config(data, overrides), path, flags, hints)


def fail(message: str, code: int = 2) -> typing.NoReturn:
    """One ``error:`` line on stderr (never wrapped), then exit ``code``."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def config_command(app: typer.Typer, name: str, cls: type[C], *, groups: Mapping[str, Sequence[str]] | None = None,
                   aliases: Mapping[str, Sequence[str]] | None = None, arguments: Sequence[str] = (),
                   prepare: Callable[[dict, Path], dict] | None = None) -> Callable[[F], F]:
    """Register ``fn(cfg: cls, **more)`` as command ``name`` on ``app``, every field of ``cls`` a flag.

    ``fn``'s docstring is the command's help; parameters after ``cfg`` (``typer.Option`` defaults)
    are extra flags passed through (e.g. the loop's ``--no-report``). A ``ConfigError`` or
    ``DataError`` (from the config or the run) is one ``error:`` line and exit 2.
    """
    def decorate(fn: F) -> F:
        flags = config_flags(cls, groups, aliases, arguments)
        more = _more_parameters(fn)
        _check_spellings(name, cls, flags, more)
        hints = {f.loc: f"set {f.label} or {'.'.join(f.loc)}: in --config" for f in flags if f.required}
        file_opt = typer.Option(None, "--config", metavar="FILE.yaml", show_default=False,
                                help=f"YAML (or JSON) with any {cls.__name__} field; the flags given override it.")
        params = [inspect.Parameter(_CTX, _KW, annotation=typer.Context),
                  inspect.Parameter(_FILE, _KW, annotation=Optional[Path], default=file_opt),
                  *(f.parameter() for f in flags), *more]

        def command(**kw: Any) -> Any:
            ctx = kw.pop(_CTX)
            path = kw.pop(_FILE)
            passed = {p.name: kw.pop(p.name) for p in more}
            overrides: dict[str, Any] = {}
            given: dict[Loc, str] = {}
            try:
                for f in flags:
                    if _given(ctx.get_parameter_source(f.param)):
                        _put(overrides, f.loc, f.value(kw[f.param]))
                        given[f.loc] = f.label
                cfg = build_config(cls, path, overrides, given, hints, prepare)
                return fn(cfg, **passed)
            except (ConfigError, DataError) as e:
                fail(str(e))

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__name__, command.__qualname__, command.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        command.__module__ = fn.__module__
        app.command(name)(command)
        return fn

    return decorate


def _more_parameters(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    """``fn``'s parameters after the config, with their annotations resolved (typer needs types)."""
    types_of = typing.get_type_hints(fn)
    return [p.replace(kind=_KW, annotation=types_of.get(p.name, p.annotation))
            for p in list(inspect.signature(fn).parameters.values())[1:]]


def _check_spellings(name: str, cls: type[BaseModel], flags: list[Flag], more: list[inspect.Parameter]) -> None:
    """Two fields (or a field and an alias) on one flag would leave one of them unreachable."""
    spelled = [n for f in flags for n in f.names] + ["--config"]
    twice = sorted({n for n in spelled if spelled.count(n) > 1})
    if twice:
        raise TypeError(f"{name}: {cls.__name__}'s flags {twice} are spelled twice (rename a field or an alias)")
    clash = {_CTX, _FILE, *(f.param for f in flags)} & {p.name for p in more}
    if clash:
        raise TypeError(f"{name}: parameters {sorted(clash)} clash with {cls.__name__}'s flags")


def _put(data: dict[str, Any], loc: Loc, value: Any) -> None:
    for key in loc[:-1]:
        data = data.setdefault(key, {})
    data[loc[-1]] = value
