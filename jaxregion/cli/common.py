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
    p.add_argument("--seq-len", type=int, default=seq_len, help=f"window length (default {seq_len})")
    p.add_argument("--max-seqs", type=int, default=None, help="keep the first N windows")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"windows per step, over all devices (default {batch_size})")
