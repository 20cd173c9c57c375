"""The ``jaxregion`` command: thin argument parsing over the library.

Each subcommand module exposes ``register(subparsers)``, which declares its commands with
:func:`jaxregion.cli.options.add_command` (a config dataclass and a handler). A handler takes
the parsed config and a :class:`Context` and returns an exit code. Bad input
(:class:`jaxregion.errors.UserError`, argparse errors) prints one line and exits 2;
``--debug`` shows the traceback instead.

The command modules import the library (and so jax, ~0.8 s) inside their handlers, so that
``jaxregion CMD --help`` starts in well under a second.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
import threading
from typing import Any

from jaxregion import __version__, safety
from jaxregion.cli import (
    convert_cmd,
    demo_cmd,
    eval_cmd,
    experiment_cmd,
    experts_cmd,
    generate_cmd,
    importance_cmd,
    options,
    plan_cmd,
    regions_cmd,
    tasks_cmd,
    train_cmd,
)
from jaxregion.configs import LaunchConfig
from jaxregion.errors import UserError

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES = [
    eval_cmd,
    generate_cmd,
    tasks_cmd,
    train_cmd,
    importance_cmd,
    regions_cmd,
    experiment_cmd,
    experts_cmd,
    demo_cmd,
    plan_cmd,
    convert_cmd,
]


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(
        prog="jaxregion",
        description="Find, measure, break and protect the linguistic regions of LLMs.",
    )
    parser.add_argument("--version", action="version", version=f"jaxregion {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show tracebacks on errors (also after the command)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=options.Parser)
    options.REGISTRY.clear()
    for mod in COMMAND_MODULES:
        mod.register(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
    """The parsed command line; None once a bad one is reported (one line on stderr)."""
    try:
        safety.check_argv(argv)
    except UserError as e:
        options.print_error("jaxregion", str(e))
        return None
    try:
        return parser.parse_args(argv)
    except options.ArgumentError as e:
        print(str(e), file=sys.stderr)
        return None


def _quiet_libraries() -> None:
    """Without --debug: orbax logs its writer threads' failures (with tracebacks) before
    raising, and its event-loop threads may die noisily after; the main thread reports the
    error."""
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    threading.excepthook = _quiet_thread_error
    sys.excepthook = _main_thread_excepthook
    sys.unraisablehook = _main_thread_unraisable


def _run(
    cmd: options.Command, ns: argparse.Namespace, cfg: Any, launch: LaunchConfig, argv: list[str]
) -> int:
    """Start the processes, then run the command: no output of it may replace one of its
    inputs (the config file included); outputs are checked, and their directories locked,
    before any work."""
    _start(launch)
    given = [*options.inputs(cmd, cfg), options.config_path(ns) or ""]
    with safety.guard(options.outputs(cmd, cfg), given, force=launch.force, lock=_first_process()):
        safety.reading(options.config_path(ns))
        return int(cmd.run(cfg, options.Context(launch, options.config_path(ns), argv)) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # stderr carries one line per error: no advice from transformers (e.g. "PyTorch was not
    # found", printed on every tokenizer load in an install without torch)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    _log_to_stderr()
    parser = build_parser()
    ns = _parse(parser, argv)
    if ns is None:
        return 2
    cmd = getattr(ns, "_command", None)
    if cmd is None:
        (getattr(ns, "_help_parser", None) or parser).print_help()
        return 2
    prog = "jaxregion " + " ".join(cmd.words)
    debug = options.debug_requested(ns)
    if not debug:
        _quiet_libraries()
    try:
        cfg, launch = options.parse(ns)
        debug = debug or launch.debug
        return _run(cmd, ns, cfg, launch, argv)
    except UserError as e:
        if debug:
            raise
        options.print_error(prog, str(e))
        return 2
    except BrokenPipeError:  # e.g. `jaxregion regions stats F | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # unreadable input, unwritable output: e names the path
        if debug:
            raise
        options.print_error(prog, str(e))
        return 2
    except KeyboardInterrupt:
        print("jaxregion: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk, however a library words it, is one line
        full = _disk_full(e)
        if full is None or debug:
            raise
        options.print_error(prog, full)
        return 2


def _quiet_thread_error(args: threading.ExceptHookArgs) -> None:
    """An exception that ends a library's background thread is not shown (without --debug):
    what it means reaches the main thread, which prints it as one line."""


def _main_thread_excepthook(tp: type, value: BaseException, tb: object) -> None:
    """Errors printed from a native library's own threads (tensorstore's callbacks run after
    orbax closed their event loop) are not shown; the main thread's are, as usual."""
    if threading.current_thread() is threading.main_thread():
        sys.__excepthook__(tp, value, tb)


def _main_thread_unraisable(u: object) -> None:
    """Likewise for "unraisable" errors of callbacks that native threads run."""
    if threading.current_thread() is threading.main_thread():
        sys.__unraisablehook__(u)


def _disk_full(e: BaseException) -> str | None:
    """The one-line message of an exception (or its cause) that says the disk is full:
    ENOSPC, or tensorstore's RESOURCE_EXHAUSTED write errors (orbax raises them as
    ValueError); None for any other exception."""
    while e is not None:
        text = str(e)
        if (
            getattr(e, "errno", None) == errno.ENOSPC
            or "No space left on device" in text
            or ("RESOURCE_EXHAUSTED" in text and "writing" in text)
        ):
            m = re.search(r'local file "([^"]+)"', text) or re.search(r"'([^']+)'", text)
            where = m.group(1) if m else "output"
            return f"{where}: no space left on device; free disk space or choose another directory"
        e = e.__cause__ or e.__context__
    return None


def _first_process() -> bool:
    """Process 0 of a multi-process run holds the output locks for all of them."""
    import jax  # deferred (see module docstring); _start imported it already

    return jax.process_index() == 0


class _Stderr(logging.Handler):
    """The library's diagnostics (logger ``jaxregion``) as bare lines on the current stderr:
    the library logs, the command line decides what the user sees."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging's own contract
            self.handleError(record)


def _log_to_stderr() -> None:
    log = logging.getLogger("jaxregion")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        log.addHandler(_Stderr())
    log.setLevel(logging.INFO)
    log.propagate = False


def _start(launch: LaunchConfig) -> None:
    """Check ``--mesh`` and join the multi-process run (a no-op for one process)."""
    from jaxregion.parallel import distributed, sharding  # deferred: jax (see module docstring)

    if launch.mesh:  # checked up front, also for commands that never build the mesh
        sharding.MeshConfig.parse(launch.mesh)
    distributed.initialize(launch.coordinator, launch.num_processes, launch.process_id)


if __name__ == "__main__":
    sys.exit(main())
