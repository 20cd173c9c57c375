"""``jaxregion convert``: a GGUF file written as an ordinary HF directory."""

from __future__ import annotations

import argparse
import sys

from jaxregion.cli.options import Context, add_command
from jaxregion.configs import ConvertConfig


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "convert",
        ConvertConfig,
        run,
        help="write a GGUF file as an HF directory (config, safetensors, tokenizer)",
        description="Dequantize a GGUF file (every type the gguf package reads) into "
        "config.json, model.safetensors and the tokenizer files, the same "
        "tensors transformers' GGUF loader makes. No torch needed. Any "
        "command's --model also takes the .gguf file directly.",
    )


def run(cfg: ConvertConfig, ctx: Context) -> int:
    from jaxregion.io import gguf_import  # deferred: numpy, gguf, transformers (see cli.main)

    info = gguf_import.convert(cfg.gguf, cfg.out, cfg.dtype)
    print(
        f"wrote {cfg.out} ({info['model_type']} from GGUF {info['architecture']}, "
        f"{info['tensors']} tensors, {info['dtype']})",
        file=sys.stderr,
    )
    return 0
