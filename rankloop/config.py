"""Typed configs: one pydantic model per entry point, loaded from YAML and overridden by the CLI.

A config is saved beside every artifact and inside every checkpoint (``config.json``), so a run
can be reproduced or resumed from its own directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

C = TypeVar("C", bound=BaseModel)


class Config(BaseModel):
    """Base for every entry point's config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ConfigError(ValueError):
    pass


def load_config(cls: type[C], path: str | Path | None = None, **overrides: Any) -> C:
    """Fields from ``path`` (YAML or JSON), then every override that is not ``None``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        where = f"{path}: " if path is not None else ""
        msgs = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{where}invalid {cls.__name__}: {msgs}") from None


def save_config(cfg: BaseModel, path: str | Path) -> None:
    from rankloop.io import atomic_write_text

    atomic_write_text(path, cfg.model_dump_json(indent=2) + "\n")
