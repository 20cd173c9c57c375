"""``jaxregion plan``: memory per device for a model, task and mesh (nothing is loaded)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="memory per device for eval / importance / train on a mesh",
        description="Bytes per device for a model (config.json or a preset) on a mesh: "
                    "parameter-shaped state exactly (with the real sharding rules), "
                    "activations estimated.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model", help="HF checkpoint directory (only config.json is read)")
    g.add_argument("--preset", help="llama2-7b, llama2-13b, llama2-70b, llama3-8b, mistral-7b")
    p.add_argument("--mesh", default="data=1,fsdp=-1,tensor=1",
                   help="e.g. data=1,fsdp=4,tensor=2 (all sizes explicit, no -1, unless "
                        "--devices is given)")
    p.add_argument("--devices", type=int, default=None,
                   help="device count to resolve a -1 in --mesh")
    p.add_argument("--task", default="importance", choices=["eval", "importance", "train"])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=None,
                   help="global windows per step (default: one per batch shard)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                   help="param/compute dtype (train keeps float32 masters regardless)")
    p.add_argument("--freeze", action="store_true", help="train: count a bool freeze mask")
    p.add_argument("--json", dest="json_out", default=None, help="also write the plan as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from jaxregion import io, plan
    from jaxregion.errors import UserError
    from jaxregion.sharding import AXES, MeshConfig

    cfg = plan.preset_config(args.preset) if args.preset else plan.model_config(args.model)
    mc = MeshConfig.parse(args.mesh)
    sizes = [getattr(mc, a) for a in AXES]
    if -1 in sizes:
        if args.devices is None:
            raise UserError(f"--mesh {args.mesh}: has a -1; give all sizes or --devices N")
        mesh = mc.resolve(args.devices)
    else:
        mesh = mc.as_dict()
    p = plan.make_plan(cfg, mesh, args.task, args.seq_len, args.batch_size, args.dtype,
                       args.freeze, args.preset or args.model)
    print(plan.format_plan(p))
    if args.json_out:
        io.write_json(args.json_out, p.as_dict())
    return 0
