"""Arguments shared by subcommands, so every command spells them the same way."""

from __future__ import annotations

import argparse


def add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")


def add_model(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--model", required=required, help="local HF checkpoint directory, or a hub id org/name"
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="param and compute dtype (default float32)")


def add_text(p: argparse.ArgumentParser, required: bool = True, flag: str = "--text") -> None:
    p.add_argument(flag, action="append", default=[], required=required, metavar="LANG=SOURCE",
                   help="a language and its corpus; repeat for several languages")


def add_windows(p: argparse.ArgumentParser, seq_len: int = 512, batch_size: int = 8) -> None:
    p.add_argument("--seq-len", type=int, default=seq_len,
                   help=f"window length (default {seq_len})")
    p.add_argument("--max-seqs", type=int, default=None, help="keep the first N windows")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"windows per step, over all devices (default {batch_size})")


def add_distributed(p: argparse.ArgumentParser) -> None:
    """Multi-host flags; every command takes them (added by ``cli.main``)."""
    if any("--coordinator" in a.option_strings for a in p._actions):
        return
    g = p.add_argument_group("multi-host")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0 for a multi-process run "
                        "(else $JAXREGION_COORDINATOR; TPU pods and SLURM are detected)")
    g.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="number of processes (else $JAXREGION_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="this process's rank, 0..N-1 (else $JAXREGION_PROCESS_ID)")


def add_mesh(p: argparse.ArgumentParser) -> None:
    """``--mesh data=-1,fsdp=1,tensor=1`` (or a YAML file with ``mesh: {...}``)."""
    if any("--mesh" in a.option_strings for a in p._actions):
        return
    p.add_argument("--mesh", default=None, metavar="SPEC",
                   help="device mesh, e.g. data=1,fsdp=4,tensor=2 or configs/mesh_fsdp.yaml "
                        "(default: all devices on data)")


def setup_distributed(args: argparse.Namespace) -> None:
    """Join the multi-process run and set the default mesh, from parsed args."""
    from jaxregion import distributed, sharding

    distributed.initialize(getattr(args, "coordinator", None),
                           getattr(args, "num_processes", None),
                           getattr(args, "process_id", None))
    spec = getattr(args, "mesh", None)
    if isinstance(spec, str) and spec:
        sharding.set_default_mesh_config(sharding.MeshConfig.parse(spec))
