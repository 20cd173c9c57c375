"""Command-line flags and ``--config`` YAML, generated from a command's config dataclass.

A command is declared once, with :func:`add_command`: its config dataclass (from
:mod:`jaxregion.configs`) gives the flags, the YAML keys, the defaults, the help text and the
checks. Every command also takes :class:`~jaxregion.configs.LaunchConfig`'s options and
``--config FILE.yaml``; flags given on the command line override the file's keys.

Naming: field ``seq_len`` is the flag ``--seq-len`` and the YAML key ``seq_len`` (``seq-len``
is accepted too); a bool that defaults to True is the flag ``--no-NAME``; a field may spell its
flag otherwise (``json_out`` -> ``--json``) or have none (nested sections: YAML only).
A ``{lang: source}`` field is a repeated ``--FLAG LANG=SOURCE``; a tuple is a repeated flag,
or one comma-separated flag when its field says ``sep=","``.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import dataclasses
import functools
import os
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from jaxregion import safety
from jaxregion import strict_loader as C
from jaxregion.configs import LaunchConfig, TrainRunConfig
from jaxregion.errors import UserError

_CONFIG_DEST = "_config"
_CONFIG_POS_DEST = "_config_positional"


class ArgumentError(Exception):
    """An argparse error, reported by ``cli.main`` as one line with exit code 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors raise :class:`ArgumentError` instead of printing usage."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(f"{self.prog}: error: {message} (see {self.prog} --help)")


@dataclass(frozen=True)
class Command:
    """One command: its words (``("regions", "core")``), config class, handler and
    fixed values (fields set by the command itself, neither flags nor keys)."""

    words: tuple[str, ...]
    config: type
    run: Callable[[Any, Any], int]
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    positional_config: bool = False


REGISTRY: list[Command] = []  # every command added, for tests and docs


class Context:
    """What a handler needs besides its config: the launch options, the device mesh and the
    config file's name (``source``, for library errors about its keys)."""

    def __init__(
        self, launch: LaunchConfig, source: str | None = None, argv: list[str] | None = None
    ) -> None:
        self.launch = launch
        self.argv = list(argv or [])  # the arguments this command was given (for the record)
        self.progress = launch.progress
        self.source = source or "the command line"

    @functools.cached_property
    def mesh(self):
        """The mesh of ``--mesh`` (default: every device on ``data``), built on first use."""
        from jaxregion.parallel import sharding  # deferred: jax, ~0.8 s (see cli.main)

        spec = self.launch.mesh
        cfg = sharding.MeshConfig.parse(spec) if spec else sharding.MeshConfig()
        return sharding.make_mesh(config=cfg)


# --- naming --------------------------------------------------------------------------------
def _kind(tp: Any) -> str:
    """How a field appears on the command line: scalar, bool, list, map, or none."""
    tp, _ = C.strip_optional(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return "bool"
    if tp in (int, float, str):
        return "scalar"
    if origin in (tuple, list, collections.abc.Sequence) and args and args[0] in (int, float, str):
        return "list"
    if origin in (dict, collections.abc.Mapping) and args == (str, str):
        return "map"
    return "none"


def flag_of(f: dataclasses.Field, tp: Any) -> str | None:
    """The flag of field ``f`` (None: YAML only)."""
    spelled = f.metadata.get("flag")
    if spelled is False or _kind(tp) == "none":
        return None
    if spelled:
        return spelled
    name = f.name.replace("_", "-")
    if _kind(tp) == "bool" and f.default is True:
        return f"--no-{name}"
    return f"--{name}"


def cli_fields(cls: type, fixed: Mapping[str, Any] = ()) -> list[tuple[dataclasses.Field, Any]]:
    """``(field, type)`` of ``cls`` that a command exposes (fixed ones left out)."""
    hints = C.field_types(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init and f.name not in fixed]


def expected_options(cmd: Command) -> set[str]:
    """Every option string ``--help`` of ``cmd`` must list (and nothing else)."""
    out = {"-h", "--help", "--config"}
    names = set()
    for cls, fixed in ((cmd.config, cmd.fixed), (LaunchConfig, {})):
        for f, tp in cli_fields(cls, fixed):
            if f.name in names:
                continue
            names.add(f.name)
            flag = flag_of(f, tp)
            if flag and not f.metadata.get("positional"):
                out.add(flag)
    return out


# --- building the parser -------------------------------------------------------------------
def _help(f: dataclasses.Field, tp: Any) -> str:
    text = f.metadata.get("help", "")
    if "choices" in f.metadata:
        text += f"; one of {', '.join(map(str, f.metadata['choices']))}"
    if C.is_required(f):
        return text + " (required)"
    d = C.default_of(f)
    if flag_of(f, tp) and flag_of(f, tp).startswith("--no-"):
        return f"turn off: {text}"
    if d is not None and not isinstance(d, bool) and d != () and d != {}:
        shown = ",".join(map(str, d)) if isinstance(d, tuple) else d
        text += f" (default {shown})"
    return text.replace("%", "%%")


def _add_field(p: argparse.ArgumentParser, groups: dict, f: dataclasses.Field, tp: Any) -> None:
    flag = flag_of(f, tp)
    if flag is None:
        return
    md = f.metadata
    target = p
    if md.get("group"):
        if md["group"] not in groups:
            groups[md["group"]] = p.add_argument_group(md["group"])
        target = groups[md["group"]]
    kind = _kind(tp)
    kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help(f, tp)}
    if md.get("positional"):
        target.add_argument(
            f.name, nargs="?", metavar=f.name.upper(), default=argparse.SUPPRESS, help=_help(f, tp)
        )
        return
    if md.get("metavar"):
        kw["metavar"] = md["metavar"]
    if kind == "bool":
        kw["action"] = "store_false" if flag.startswith("--no-") else "store_true"
    elif kind == "map" or (kind == "list" and not md.get("sep")):
        kw["action"] = "append"
    target.add_argument(flag, **kw)


def add_command(
    sub: argparse._SubParsersAction,
    words: str | tuple[str, ...],
    config: type,
    run: Callable[[Any, Any], int],
    *,
    help: str,  # noqa: A002
    description: str | None = None,
    fixed: Mapping[str, Any] | None = None,
    positional_config: bool = False,
) -> argparse.ArgumentParser:
    """Add the command ``words`` (its last word is the subparser's name) to ``sub``.

    ``run(cfg, ctx)`` gets the parsed config and a context (``ctx.mesh``, ``ctx.progress``)
    and returns the exit code. ``positional_config``: ``CMD FILE.yaml`` means ``--config``."""
    words = (words,) if isinstance(words, str) else tuple(words)
    cmd = Command(words, config, run, dict(fixed or {}), positional_config)
    REGISTRY.append(cmd)
    p = sub.add_parser(words[-1], help=help, description=description or help)
    p.set_defaults(_command=cmd)
    if positional_config:
        p.add_argument(
            _CONFIG_POS_DEST,
            nargs="?",
            metavar="CONFIG",
            default=None,
            help="YAML config (same as --config)",
        )
    p.add_argument(
        "--config",
        dest=_CONFIG_DEST,
        default=None,
        metavar="FILE.yaml",
        help="YAML of any options below (keys = field names); flags override it",
    )
    groups: dict[str, Any] = {}
    seen = set()
    for cls, fx in ((config, cmd.fixed), (LaunchConfig, {})):
        for f, tp in cli_fields(cls, fx):
            if f.name not in seen:
                seen.add(f.name)
                _add_field(p, groups, f, tp)
    return p


# --- from parsed flags to configs ----------------------------------------------------------
def _parse_scalar(raw: str, tp: Any, flag: str) -> Any:
    tp, _ = C.strip_optional(tp)
    try:
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
    except ValueError:
        what = "an integer" if tp is int else "a number"
        raise UserError(f"{flag} {raw!r}: expected {what}") from None
    return raw


def _from_flag(value: Any, f: dataclasses.Field, tp: Any, flag: str) -> tuple[Any, str]:
    """The typed value of a flag's raw string(s), and the text naming it in errors."""
    kind = _kind(tp)
    base, _ = C.strip_optional(tp)
    if kind == "bool":
        return value, flag
    if kind == "scalar":
        return _parse_scalar(value, base, flag), f"{flag} {value}"
    if kind == "list":
        inner = typing.get_args(base)[0]
        raws = (
            [x.strip() for x in value.split(f.metadata["sep"])]
            if f.metadata.get("sep")
            else list(value)
        )
        raws = [x for x in raws if x != ""] if f.metadata.get("sep") else raws
        shown = f"{flag} {value if isinstance(value, str) else ' '.join(value)}"
        return [_parse_scalar(x, inner, flag) for x in raws], shown
    out: dict[str, str] = {}  # map: repeated KEY=VALUE
    metavar = f.metadata.get("metavar", "KEY=VALUE")
    for item in value:
        key, eq, val = item.partition("=")
        key, val = key.strip(), val.strip()
        if not eq or not key or not val:
            raise UserError(f"{flag} {item!r}: expected {metavar}, e.g. {flag} ar=data/ar.txt")
        if key in out:
            raise UserError(f"{flag} {item!r}: {key!r} given twice")
        out[key] = val
    return out, flag


def _values(
    cls: type, fixed: Mapping[str, Any], ns: dict, yaml: dict, path: str | None
) -> tuple[dict, dict[str, str]]:
    """Checked values of ``cls``'s fields from YAML then flags; and each field's flag."""
    values: dict[str, Any] = {}
    flags: dict[str, str] = {}
    for f, tp in cli_fields(cls, fixed):
        flag = flag_of(f, tp)
        flags[f.name] = flag or f.name
        if f.name in yaml:
            values[f.name] = C.convert_field(cls, f.name, yaml[f.name], f"{path}: {f.name}")
        if f.name in ns:
            name = f.name if f.metadata.get("positional") else flag
            raw, where = _from_flag(ns[f.name], f, tp, name)
            values[f.name] = C.convert(raw, tp, where, {**f.metadata, "coerce": None})
    return values, flags


def config_path(ns: argparse.Namespace) -> str | None:
    """The ``--config`` (or positional CONFIG) file of parsed args, if any."""
    return getattr(ns, _CONFIG_DEST, None) or getattr(ns, _CONFIG_POS_DEST, None)


# Fields that name an output of a command (a file or a directory): the write guard protects
# every input of the command from them (see jaxregion.safety.guard). A field whose metavar
# ends in DIR is a directory (locked while the command runs); HF_DIR is an export (its
# contents are replaced). Training commands also write their --ckpt-dir (locked, never an
# input); ``dir`` (a forgetting sweep's importance cache) is read and written.
OUTPUT_FIELDS = ("json_out", "out", "export", "out_dir")
WORK_FIELDS = ("ckpt_dir", "dir")


def _output_kind(f: dataclasses.Field) -> str:
    """``NEW_DIR``: a directory made whole by one rename (``convert``); it must not exist,
    and no lock is taken inside it."""
    metavar = str(f.metadata.get("metavar", ""))
    if metavar == "NEW_DIR":
        return "new"
    return "export" if metavar == "HF_DIR" else "dir" if metavar.endswith("DIR") else "file"


def outputs(cmd: Command, cfg: Any) -> list[safety.Output]:
    """The outputs ``cfg`` names: files and directories (a training run's --ckpt-dir too)."""
    out = []
    for f, tp in cli_fields(cmd.config, cmd.fixed):
        value = getattr(cfg, f.name, None)
        if f.name in OUTPUT_FIELDS and isinstance(value, str):
            out.append(safety.Output(flag_of(f, tp) or f.name, value, _output_kind(f)))
        elif f.name == "ckpt_dir" and issubclass(cmd.config, TrainRunConfig):
            out.append(safety.Output(flag_of(f, tp) or f.name, value, "dir"))
    return out


def inputs(cmd: Command, cfg: Any) -> list[str]:
    """Every existing path ``cfg`` names outside its outputs (nested sections included): a
    ``SOURCE`` such as ``jsonl:PATH`` counts by its path. Directories count as a whole."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                if f.name not in OUTPUT_FIELDS and f.name not in WORK_FIELDS:
                    walk(getattr(value, f.name))
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value and "\0" not in value:
            for cand in (value, value.partition(":")[2]):
                with contextlib.suppress(OSError, ValueError):
                    if cand and os.path.lexists(cand):
                        found.append(cand)

    walk(cfg)
    return found


def parse(ns: argparse.Namespace) -> tuple[Any, LaunchConfig]:
    """The command's config and the launch config from parsed args (+ ``--config``)."""
    cmd: Command = ns._command
    given = {k: v for k, v in vars(ns).items() if not k.startswith("_")}
    path = config_path(ns)
    if getattr(ns, _CONFIG_DEST, None) and getattr(ns, _CONFIG_POS_DEST, None):
        raise UserError("give the config once: as CONFIG or as --config, not both")
    data = {str(k).replace("-", "_"): v for k, v in C.read_mapping(path).items()} if path else {}
    own = {f.name for f, _ in cli_fields(cmd.config, cmd.fixed)}
    launch_names = {f.name for f, _ in cli_fields(LaunchConfig)} - own
    for k in data:
        if k not in own and k not in launch_names:
            raise UserError(
                f"{path}: unknown key {k!r}; known keys: {', '.join(sorted(own | launch_names))}"
            )
    vals, flags = _values(
        cmd.config,
        cmd.fixed,
        {k: v for k, v in given.items() if k in own},
        {k: v for k, v in data.items() if k in own},
        path,
    )
    vals.update(cmd.fixed)
    lvals, _ = _values(
        LaunchConfig,
        {n: None for n in own},
        {k: v for k, v in given.items() if k in launch_names},
        {k: v for k, v in data.items() if k in launch_names},
        path,
    )

    def missing(name: str) -> str:
        how = f"{flags[name]}" if flags[name] != name else f"{name!r}"
        return f"{how} is required (on the command line, or as `{name}:` in --config)"

    launch = C.build(LaunchConfig, lvals)
    return C.build(cmd.config, vals, missing), launch


def debug_requested(ns: argparse.Namespace) -> bool:
    """``--debug`` given on the command line (before any config file is read)."""
    return bool(getattr(ns, "debug", False))


def print_error(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
