"""The command line built from the typed configs (rankloop.cli): every field a flag, --config on
every command, the flags given override the file, grouped --help, one-line errors, old spellings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
import typer
import yaml
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from rankloop.cli import app
from rankloop.cli import commands as C
from rankloop.cli.typed import OTHER, config_command
from rankloop.config import Config
from rankloop.loop import LoopConfig
from rankloop.quickstart import QuickstartConfig
from rankloop.reward.eval_config import EvalConfig
from rankloop.reward.config import RewardTrainConfig
from rankloop.dpo.config import DPOConfig
from rankloop.rl.config import GRPOConfig, PPOConfig, RLOOConfig
from rankloop.sft.config import SFTConfig
from rankloop.sample import SampleConfig

ROOT = Path(__file__).resolve().parents[1]

# command → (its config, its --help panels)
COMMANDS = {
    "sample": (SampleConfig, C.SAMPLE_GROUPS),
    "serve": (C.ServeConfig, C.SERVE_GROUPS),
    "export": (C.ExportConfig, C.EXPORT_GROUPS),
    "train-rm": (RewardTrainConfig, C.RM_GROUPS),
    "eval-rm": (EvalConfig, C.EVAL_GROUPS),
    "ppo": (PPOConfig, C.PPO_GROUPS),
    "rloo": (RLOOConfig, C.groups_of(RLOOConfig)),
    "grpo": (GRPOConfig, C.groups_of(GRPOConfig)),
    "train-dpo": (DPOConfig, C.DPO_GROUPS),
    "train-sft": (SFTConfig, C.SFT_GROUPS),
    "quickstart": (QuickstartConfig, C.QUICKSTART_GROUPS),
    "loop": (LoopConfig, C.LOOP_GROUPS),
}


def click_command(name: str):
    return typer.main.get_command(app).commands[name]


def field_locs(cls: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field of ``cls``, nested configs' fields included."""
    out = []
    for name, f in cls.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            out += field_locs(f.annotation, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def flag_of(loc: tuple[str, ...]) -> str:
    return "--" + "-".join(p.replace("_", "-") for p in loc)


# ---------------------------------------------------------------- every field is a flag, grouped


@pytest.mark.parametrize("name", COMMANDS)
def test_every_field_is_a_flag_in_a_named_group(name):
    cls, groups = COMMANDS[name]
    cmd = click_command(name)
    opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    args = {p.name for p in cmd.params if not p.opts[0].startswith("-")}
    missing = [flag_of(loc) for loc in field_locs(cls) if flag_of(loc) not in opts and "__".join(loc) not in args]
    assert not missing, f"{name}: fields without a flag: {missing}"
    assert "--config" in opts
    # every top-level field sits in exactly one panel, and no flag falls through to "Other settings"
    listed = [f for names in groups.values() for f in names]
    assert len(listed) == len(set(listed))
    nested = {n for n, f in cls.model_fields.items() if isinstance(f.annotation, type)
              and issubclass(f.annotation, BaseModel)}
    assert set(listed) == set(cls.model_fields) - nested, name
    assert not [p.name for p in cmd.params if getattr(p, "rich_help_panel", None) == OTHER]


def test_ppo_and_reward_configs_have_every_field_as_a_flag():
    # the counts the issue started from: 28 of 53 and 24 of 38 were hand-copied
    for name, cls, n in (("ppo", PPOConfig, 53), ("train-rm", RewardTrainConfig, 38)):
        opts = {o for p in click_command(name).params for o in p.opts}
        assert len(cls.model_fields) >= n
        assert all(flag_of((f,)) in opts for f in cls.model_fields)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_lists_the_groups_and_documents_fields(name):
    cls, groups = COMMANDS[name]
    r = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "160"})
    assert r.exit_code == 0, r.output
    for title in groups:
        assert f"─ {title} ─" in r.output, title
    assert "--config" in r.output
    # every field's description is there (its first words: rich wraps the rest)
    flat = " ".join(r.output.replace("│", " ").split())
    for f in cls.model_fields.values():
        if f.description and not (isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)):
            assert " ".join(f.description.split()[:3]) in flat, f.description


def test_help_shows_defaults_choices_and_aliases():
    r = CliRunner().invoke(app, ["ppo", "--help"], env={"COLUMNS": "200"})
    out = r.output
    assert "[fixed|adaptive]" in out and "[default: fixed]" in out           # Literal: choices, default
    assert "--lora" in out and "--no-lora" in out                              # bool: --x/--no-x
    assert "--lr" in out and "--learning-rate" in out                          # old spelling kept
    assert "Required: this or the field in --config" in out                    # policy, output
    r = CliRunner().invoke(app, ["sample", "--help"], env={"COLUMNS": "200"})
    assert "Comma-separated or repeated" in r.output                          # list field
    r = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "RANKLOOP_ADMIN_PASSWORD" in r.output                               # env var shown


def test_top_level_help_is_one_line_per_command_and_imports_no_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "rankloop.cli", "--help"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    heavy = [ln for ln in proc.stderr.splitlines() if re.search(r"\|\s+(torch|transformers|fastapi)(\.|\s*$)", ln)]
    assert not heavy, heavy[:5]
    rows = [ln for ln in proc.stdout.splitlines() if re.match(r"│ [a-z][a-z-]* {2,}\S", ln)]
    assert [ln.split()[1] for ln in rows] == ["sample", "serve", "export", "train-rm", "eval-rm", "train-sft", "train-dpo", "ppo",
                                              "rloo", "grpo", "quickstart", "loop", "labeling"]
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "rankloop.cli", "ppo", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and not re.search(r"\|\s+torch(\.|\s*$)", proc.stderr, re.M)


# ---------------------------------------------------------------- --config plus the flags given


class Inner(Config):
    x: int = Field(1, description="An inner count.")
    y: str = Field("p", description="An inner name.")


class Toy(Config):
    name: str = Field(description="A required name.")
    n: int = Field(3, ge=1, description="A count.")
    flag: bool = Field(True, description="A switch.")
    mode: Literal["a", "b"] = Field("a", description="A choice.")
    cap: float | None = Field(1.0, gt=0, description="An optional cap.")
    ids: list[int] | None = Field(None, description="Ids.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Free settings.")
    inner: Inner = Field(default_factory=Inner, description="Nested settings.")


def show(cfg: BaseModel, shout: bool = typer.Option(False, "--shout", help="An extra flag.")) -> None:
    """Print the config."""
    typer.echo(json.dumps({**cfg.model_dump(), "shout": shout}))


def toy_app(cls=Toy, **kw) -> typer.Typer:
    a = typer.Typer()
    config_command(a, "show", cls, **kw)(show)
    config_command(a, "other", cls, **kw)(show)  # two commands, so "show" stays a sub-command
    return a


def run_toy(args, cls=Toy, **kw) -> tuple[int, Any]:
    r = CliRunner().invoke(toy_app(cls, **kw), ["show", *map(str, args)])
    return r.exit_code, (json.loads(r.stdout) if r.exit_code == 0 else r.output)


def test_config_file_then_only_the_flags_given(tmp_path):
    f = tmp_path / "toy.yaml"
    f.write_text(yaml.safe_dump({"name": "file", "n": 5, "flag": False, "ids": [1], "extra": {"a": 1, "b": 2},
                                 "inner": {"x": 7, "y": "q"}}))
    code, cfg = run_toy(["--config", f])
    assert code == 0 and cfg["name"] == "file" and cfg["n"] == 5 and cfg["flag"] is False
    assert cfg["mode"] == "a" and cfg["cap"] == 1.0 and cfg["shout"] is False  # the defaults
    # a flag overrides its field only; unset flags leave the file's values (not the flag defaults)
    code, cfg = run_toy(["--config", f, "--n", "9", "--inner-y", "r", "--extra", "b=3", "--extra", "c=null",
                         "--shout"])
    assert code == 0, cfg
    assert cfg["n"] == 9 and cfg["flag"] is False and cfg["name"] == "file" and cfg["ids"] == [1]
    assert cfg["inner"] == {"x": 7, "y": "r"}                      # nested: merged into the file's mapping
    assert cfg["extra"] == {"a": 1, "b": 3, "c": None}             # dict: KEY=VALUE merged, values as YAML
    assert cfg["shout"] is True
    code, cfg = run_toy(["--config", f, "--flag", "--mode", "b", "--cap", "none", "--ids", "4,5", "--ids", "6"])
    assert code == 0 and cfg["flag"] is True and cfg["mode"] == "b" and cfg["cap"] is None and cfg["ids"] == [4, 5, 6]
    # the required field from the flag alone
    code, cfg = run_toy(["--name", "flag", "--no-flag"])
    assert code == 0 and cfg["name"] == "flag" and cfg["flag"] is False and cfg["n"] == 3


def test_missing_required_and_bad_values_are_one_clear_line(tmp_path):
    code, out = run_toy([])
    assert code == 2 and out.strip() == ("error: invalid Toy: name: Field required "
                                         "(set --name or name: in --config)")
    code, out = run_toy(["--name", "x", "--n", "0"])
    assert code == 2 and out.strip() == "error: invalid Toy: --n: Input should be greater than or equal to 1 (got '0')"
    code, out = run_toy(["--name", "x", "--mode", "c"])
    assert code == 2 and "--mode: Input should be 'a' or 'b' (got 'c')" in out and len(out.strip().splitlines()) == 1
    code, out = run_toy(["--name", "x", "--extra", "novalue"])
    assert code == 2 and "--extra: expected KEY=VALUE, got 'novalue'" in out
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nn: many\n")
    code, out = run_toy(["--config", f])
    assert code == 2 and out.strip() == f"error: {f}: invalid Toy: n: Input should be a valid integer, unable to parse " \
                                        "string as an integer (got 'many')"
    code, out = run_toy(["--config", tmp_path / "absent.yaml"])
    assert code == 2 and "absent.yaml: config file not found" in out


@pytest.mark.parametrize("args, needle", [
    (["ppo", "--policy", "p", "--output", "o", "--iterations", "abc"], "--iterations: Input should be a valid integer"),
    (["ppo", "--policy", "p", "--output", "o", "--kl-control", "bogus"], "--kl-control: Input should be 'fixed' or "
                                                                         "'adaptive' (got 'bogus')"),
    (["ppo", "--output", "o"], "policy: Field required (set --policy or policy: in --config)"),
    (["train-rm", "--data", "d", "--model", "m", "--output", "o", "--loss", "hinge"], "--loss: Input should be 'bt' "
                                                                                      "or 'pl'"),
    (["quickstart", "--labelers", "robots"], "--labelers: Input should be 'simulated' or 'human'"),
    (["loop", "--labelers", "robots"], "--labeling-mode/--labelers: Input should be 'simulated' or 'human'"),
    (["serve", "--port", "0"], "--port: Input should be greater than or equal to 1"),
    (["export", "p", "--min-agreement", "2"], "--min-agreement: Input should be less than or equal to 1"),
    (["sample", "--model", "m", "--prompts", "p", "--output", "o", "--stop-token-ids", "2,x"], "--stop-token-ids"),
    (["eval-rm", "--model", "m", "--data", "d", "--format", "csv"], "--format: Input should be"),
])
def test_bad_value_exits_2_with_one_line(args, needle):
    proc = subprocess.run([sys.executable, "-m", "rankloop.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid ") and needle in lines[0], proc.stderr


def test_real_command_reads_config_and_the_argument_overrides_it(tmp_path):
    from rankloop.labeling.db import upgrade

    url = f"sqlite:///{tmp_path / 'labels.db'}"
    upgrade(url)
    f = tmp_path / "export.yaml"
    f.write_text(yaml.safe_dump({"project": "from-file", "database_url": url, "out": str(tmp_path / "r.jsonl")}))
    r = CliRunner().invoke(app, ["export", "--config", str(f)])
    assert r.exit_code == 2 and "no project 'from-file'" in r.output
    r = CliRunner().invoke(app, ["export", "from-flag", "--config", str(f)])
    assert r.exit_code == 2 and "no project 'from-flag'" in r.output


# ---------------------------------------------------------------- the loop's config


def test_loop_flags_merge_into_the_yaml_and_paths_resolve_beside_it(tmp_path):
    d = tmp_path / "conf"
    d.mkdir()
    (d / "prompts.jsonl").write_text('{"id": "p", "text": "t"}\n')
    f = d / "loop.yaml"
    f.write_text(yaml.safe_dump({"output": "run", "policy": "m", "prompts": "prompts.jsonl",
                                 "eval_prompts": "not-there.jsonl", "labeling": {"labelers": 3},
                                 "ppo": {"iterations": 20, "batch_size": 8}}))
    kw = dict(groups=C.LOOP_GROUPS, prepare=C.resolve_loop_paths,
              aliases={"output": ("-o",), "labeling.mode": ("--labelers",)})
    code, cfg = run_toy(["--config", f, "--labelers", "human", "--ppo-iterations", "3", "-o", "elsewhere",
                         "--rounds", "2"], cls=LoopConfig, **kw)
    assert code == 0, cfg
    assert cfg["labeling"]["mode"] == "human" and cfg["labeling"]["labelers"] == 3
    # (flag values reach pydantic as text; the file's keep their YAML types)
    assert cfg["ppo"] == {"iterations": "3", "batch_size": 8} and cfg["rounds"] == 2 and cfg["output"] == "elsewhere"
    assert cfg["prompts"] == str(d.resolve() / "prompts.jsonl")   # beside the YAML
    assert cfg["eval_prompts"] == "not-there.jsonl"               # left as written: no such file anywhere
    # a path given as a flag is the user's, relative to where they are
    code, cfg = run_toy(["--config", f, "--prompts", "prompts.jsonl"], cls=LoopConfig, **kw)
    assert code == 0 and cfg["prompts"] == "prompts.jsonl"
    # the stage settings are typed: a bad value given as a flag is the same clear error as in the file
    code, out = run_toy(["--config", f, "--ppo-iterations", "0"], cls=LoopConfig, **kw)
    assert code == 2 and "iterations" in out


# ---------------------------------------------------------------- the spellings the docs use


def doc_command_lines() -> list[tuple[str, list[str], str]]:
    """(command path, flags, where) of every `rankloop CMD …` in the README, docs, examples, Makefile."""
    root = typer.main.get_command(app)
    names = set(root.commands)
    out = []
    examples = [p for p in (ROOT / "examples").rglob("*") if p.is_file()]
    for path in [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "docs").glob("*.md"), *examples]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for m in re.finditer(r"rankloop(?:\.cli)? ([a-z-]+)((?: [^`#&|]*)?)", line):
                if m.group(1) not in names:
                    continue
                cmd, rest = [m.group(1)], m.group(2).split()
                c = root.commands[cmd[0]]
                while rest and rest[0] in getattr(c, "commands", {}):  # a group's sub-command (labeling tokens create)
                    c = c.commands[rest[0]]
                    cmd.append(rest.pop(0))
                flags = [t.strip("[]").split("=")[0] for t in rest if re.match(r"\[?-", t)]
                out.append((" ".join(cmd), [f for f in flags if f not in ("…",)], f"{path.name}:{n}"))
    return out


def test_every_flag_the_docs_use_exists():
    lines = doc_command_lines()
    assert len(lines) > 20
    group = typer.main.get_command(app)
    for cmd, flags, where in lines:
        c = group
        for part in cmd.split():
            c = c.commands[part]
        opts = {"--help"} | {o for p in c.params for o in (*p.opts, *p.secondary_opts)}
        unknown = [f for f in flags if f not in opts]
        assert not unknown, f"{where}: rankloop {cmd}: unknown {unknown}"


def test_a_flag_spelled_twice_is_refused_when_the_command_is_built():
    with pytest.raises(TypeError, match=r"flags \['--name'\] are spelled twice"):
        toy_app(aliases={"n": ("--name",)})
