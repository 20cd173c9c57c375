"""The ``jaxregion`` command: thin argument parsing over the library.

Each subcommand lives in its own module exposing ``register(subparsers)``; the handler it sets
with ``set_defaults(func=...)`` takes the parsed args and returns an exit code.
Bad input (:class:`jaxregion.errors.UserError`) prints one line and exits 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from jaxregion import __version__, safety
from jaxregion.errors import UserError

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES = [
    "jaxregion.cli.eval_cmd",
    "jaxregion.cli.generate_cmd",
    "jaxregion.cli.tasks_cmd",
    "jaxregion.cli.train_cmd",
    "jaxregion.cli.importance_cmd",
    "jaxregion.cli.regions_cmd",
    "jaxregion.cli.experiment_cmd",
    "jaxregion.cli.demo_cmd",
    "jaxregion.cli.plan_cmd",
]


# argparse dests that name an output path (files or directories) of a command
OUTPUT_ARGS = ("json_out", "out", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxregion",
        description="Find, measure, break and protect the linguistic regions of LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"jaxregion {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    from jaxregion.cli.common import add_distributed, add_mesh

    for p in _leaf_parsers(sub):  # every command, nested ones too: multi-host and mesh flags
        add_distributed(p)
        add_mesh(p)
    return parser


def _leaf_parsers(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Every parser under ``sub``, nested subcommands (``regions core``) included."""
    out = []
    for p in dict.fromkeys(sub.choices.values()):
        out.append(p)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                out += _leaf_parsers(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # stderr carries one line per error: no advice from transformers (e.g. "PyTorch was not
    # found", printed on every tokenizer load in an install without torch)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or "--debug" in argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        from jaxregion.cli.common import setup_distributed

        setup_distributed(args)
        outputs = {f"--{k.replace('_out', '').replace('_', '-')}": getattr(args, k, None)
                   for k in OUTPUT_ARGS if isinstance(getattr(args, k, None), str)}
        with safety.guard(outputs):  # no output of this command may replace one of its inputs
            return int(args.func(args) or 0)
    except UserError as e:
        if debug:
            raise
        print(f"jaxregion {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `jaxregion regions stats F | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # unreadable input, unwritable output: e names the path
        if debug:
            raise
        print(f"jaxregion {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxregion: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
