"""``jaxregion regions``: select regions from importance files, describe and compare them.

    jaxregion regions {core,bottom,random,monolingual,top} --importance DIR [--langs a,b]
        [--lang L] --ratio 0.01 [--scope per-tensor|per-layer|global] [--include RE]
        [--exclude RE] [--seed S] [--model DIR] --out FILE.safetensors
    jaxregion regions stats FILE [--json OUT] [--model DIR]
    jaxregion regions compare A B [--json OUT] [--model DIR]

Everything is validated before anything is written; bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxregion.cli import common

SELECT_KINDS = ("core", "bottom", "random", "monolingual", "top")


def register(sub: argparse._SubParsersAction) -> None:
    from jaxregion.regions import DEFAULT_INCLUDE, SCOPES

    p = sub.add_parser("regions", help="select, describe and compare regions",
                       description="Select regions from importance scores, describe and "
                                   "compare region files.")
    rs = p.add_subparsers(dest="regions_command", metavar="ACTION")
    helps = {
        "core": "top-ratio of Σ_lang |score| (the paper's core region)",
        "bottom": "bottom-ratio of Σ_lang |score| (control)",
        "random": "uniformly random ratio of elements (control; --seed)",
        "monolingual": "top-ratio of --lang and in no other language's top-ratio",
        "top": "top-ratio of one language's |score|",
    }
    for kind in SELECT_KINDS:
        q = rs.add_parser(kind, help=helps[kind], description=helps[kind])
        q.add_argument("--importance", required=kind != "random", default=None, metavar="DIR",
                       help="directory of LANG.safetensors importance files")
        q.add_argument("--langs", default=None,
                       help="comma-separated languages (default: every file in DIR)")
        if kind in ("monolingual", "top"):
            q.add_argument("--lang", required=True, help="the language of the region")
        q.add_argument("--ratio", default="0.01", help="fraction in (0, 1] "
                       "(default 0.01)")
        q.add_argument("--scope", default="per-tensor", choices=SCOPES,
                       help="where k is counted (default per-tensor)")
        q.add_argument("--include", default=DEFAULT_INCLUDE,
                       help=f"regex of HF names to select from (default {DEFAULT_INCLUDE!r}: "
                            "the transformer layers' parameters, per the family table)")
        q.add_argument("--exclude", default=None, help="regex of HF names to leave out")
        q.add_argument("--seed", type=int, default=0, help="random seed (random only)")
        common.add_model(q, required=False)
        q.add_argument("--out", required=True, help="region file to write (.safetensors)")
        common.add_debug(q)
        q.set_defaults(func=run_select, kind=kind)
    q = rs.add_parser("stats", help="Markdown tables: per module type, per layer, hidden dims",
                      description="Describe a region file.")
    q.add_argument("file")
    q.add_argument("--json", dest="json_out", default=None, help="write the full stats JSON here")
    q.add_argument("--top", type=int, default=10, help="rows/columns listed per table (10)")
    common.add_model(q, required=False)
    common.add_debug(q)
    q.set_defaults(func=run_stats)
    q = rs.add_parser("compare", help="Jaccard, sizes and intersection of two region files",
                      description="Compare two region files.")
    q.add_argument("a")
    q.add_argument("b")
    q.add_argument("--json", dest="json_out", default=None, help="write the comparison JSON here")
    common.add_model(q, required=False)
    common.add_debug(q)
    q.set_defaults(func=run_compare)
    common.add_debug(p)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


# --- helpers -----------------------------------------------------------------------------
def _model_template(model: str | None):
    """Abstract params and fingerprint of ``--model`` (headers only, no weights read)."""
    if model is None:
        return None, None
    from jaxregion import hf
    from jaxregion.models import abstract_params
    from jaxregion.regions import fingerprint

    ck = hf.open_checkpoint(model)
    tmpl = abstract_params(ck.config)
    return tmpl, fingerprint(tmpl)


def _header(path: str) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def _load_scores(directory: str, langs_arg: str | None):
    from jaxregion.errors import UserError
    from jaxregion.regions import importance_path, load_importance_dir

    langs = None
    if langs_arg is not None:
        langs = [x.strip() for x in langs_arg.split(",") if x.strip()]
        if not langs:
            raise UserError(f"--langs {langs_arg!r} names no language")
        if len(set(langs)) != len(langs):
            raise UserError(f"--langs {langs_arg!r} names a language twice")
    scores = load_importance_dir(directory, langs)
    headers = {lang: _header(importance_path(directory, lang)) for lang in scores}
    ests = {lang: h.get("estimator") for lang, h in headers.items() if h.get("estimator")}
    if len(set(ests.values())) > 1:
        desc = ", ".join(f"{k}={v}" for k, v in sorted(ests.items()))
        raise UserError(f"importance files in {directory} mix estimators ({desc}); recompute "
                        "them with one estimator")
    paths = {h.get("model_path") for h in headers.values() if h.get("model_path")}
    if len(paths) > 1:
        print(f"warning: importance files in {directory} name different model paths "
              f"({', '.join(sorted(paths))}); shapes agree, so they are used together",
              file=sys.stderr)
    return scores, headers


def _check_out(path: str) -> None:
    from jaxregion.errors import UserError

    if os.path.isdir(path):
        raise UserError(f"--out {path}: is a directory; give a .safetensors file path")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise UserError(f"--out {path}: parent {parent} is not a directory")


# --- select --------------------------------------------------------------------------------
def run_select(args: argparse.Namespace) -> int:
    from jaxregion.errors import UserError
    from jaxregion.regions import fingerprint, save_region, select
    from jaxregion.regions.base import check_ratio
    from jaxregion.safety import check_name

    args.ratio = check_ratio(args.ratio)
    _check_out(args.out)
    template, model_fp = _model_template(args.model)
    scores = None
    sources = None
    if args.importance is not None:
        scores, _ = _load_scores(args.importance, args.langs)
        fp = fingerprint(scores[next(iter(scores))])
        if model_fp is not None and fp != model_fp:
            raise UserError(f"importance files in {args.importance} are for another model than "
                            f"--model {args.model} (names/shapes differ)")
        from jaxregion.regions import importance_path

        sources = {lang: importance_path(args.importance, lang) for lang in scores}
    elif args.kind == "random" and template is None:
        raise UserError("regions random needs --importance DIR or --model DIR for the shapes")
    lang = getattr(args, "lang", None)
    if lang is not None:
        check_name(lang, "--lang")
    if lang is not None and scores is not None and lang not in scores:
        raise UserError(f"--lang {lang!r} is not among the loaded languages "
                        f"({', '.join(scores)}); add it to --langs")
    region = select(args.kind, scores, lang=lang, ratio=args.ratio, scope=args.scope,
                    include=args.include or None, exclude=args.exclude or None, seed=args.seed,
                    template=template if args.kind == "random" and scores is None else None,
                    sources=sources)
    if region.size == 0:
        raise UserError(f"the {args.kind} region is empty (every element is also in another "
                        "language's top set); nothing written. Try a smaller --ratio or fewer "
                        "--langs")
    save_region(args.out, region)
    print(f"{args.kind}: {region.size} of {region.numel} elements "
          f"({100 * region.density:.4f}%) in {len(region.names())} tensors -> {args.out}",
          file=sys.stderr)
    return 0


# --- stats / compare -----------------------------------------------------------------------
def _load_region(path: str, model: str | None):
    from jaxregion.regions import load_region

    template, _ = _model_template(model)
    return load_region(path, template)


def _hidden_size(region) -> int | None:
    """The residual width, read off the first norm on the residual stream in the region's
    universe (roles from the family tables)."""
    import numpy as np

    from jaxregion.regions import roles_for

    flat = region.flat()
    roles = roles_for(region.names())
    for n in region.names():
        r = roles.get(n)
        if r is not None and r.kind == "norm" and r.residual_axis is not None:
            return int(np.shape(flat[n])[r.residual_axis])
    return None


def stats_markdown(region, st: dict, top: int = 10) -> str:
    import numpy as np

    from jaxregion.errors import UserError
    from jaxregion.regions import hidden_dim_profile
    from jaxregion.report.tables import markdown_table

    meta = region.meta
    out = [f"# Region: {meta.get('kind', '?')}", ""]
    desc = [(k, meta[k] if not isinstance(meta[k], list) else ",".join(map(str, meta[k])))
            for k in ("kind", "ratio", "langs", "lang", "scope", "seed", "include", "exclude",
                      "model") if meta.get(k) not in (None, "", [])]
    out += [markdown_table(["key", "value"], desc), ""]
    out += [markdown_table(["selected", "numel", "density"],
                           [(st["total"], st["numel"], st["density"])], digits=6), ""]
    out += ["## Per module type", ""]
    out += [markdown_table(["module", "selected", "numel", "density"],
                           [(k, v["selected"], v["numel"], v["density"])
                            for k, v in st["by_module"].items()], digits=6), ""]
    out += ["## Per layer", ""]
    out += [markdown_table(["layer", "selected", "numel", "density"],
                            [(k, v["selected"], v["numel"], v["density"])
                             for k, v in st["by_layer"].items()], digits=6), ""]
    hidden = _hidden_size(region)
    if hidden is not None:
        try:
            prof = hidden_dim_profile(region, hidden)
        except UserError:
            prof = None
        if prof is not None and prof.sum() > 0:
            order = np.argsort(-prof, kind="stable")[:top]
            total = int(prof.sum())
            out += [f"## Top hidden dimensions (residual width {hidden}; readers' input "
                    "columns, writers' output rows, norms)", ""]
            out += [markdown_table(["dim", "selected", "share"],
                                   [(int(i), int(prof[i]), prof[i] / total) for i in order
                                    if prof[i] > 0]), ""]
    if st["module_dims"]:
        out += ["## Concentration per module type (summed over layers)", ""]
        rows = []
        for mt, d in st["module_dims"].items():
            rows.append((mt, d["rows_top_frac"], d["cols_top_frac"],
                         " ".join(f"{i}:{c}" for i, c in d["top_rows"][:5]),
                         " ".join(f"{i}:{c}" for i, c in d["top_cols"][:5])))
        out += [markdown_table(["module", "share in top 1% rows", "share in top 1% cols",
                                "top rows (idx:count)", "top cols (idx:count)"], rows), ""]
    return "\n".join(out)


def run_stats(args: argparse.Namespace) -> int:
    from jaxregion import io
    from jaxregion.regions import stats

    region = _load_region(args.file, args.model)
    st = stats(region, top_n=args.top)
    print(stats_markdown(region, st, args.top))
    if args.json_out:
        io.write_json(args.json_out, {"file": args.file, "meta": dict(region.meta), **st})
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from jaxregion import io
    from jaxregion import tree as T
    from jaxregion.errors import UserError
    from jaxregion.regions import intersection, jaccard, module_type, size, union
    from jaxregion.report.tables import markdown_table

    a = _load_region(args.a, args.model)
    b = _load_region(args.b, args.model)
    fa, fb = T.flatten(a.mask), T.flatten(b.mask)
    if set(fa) != set(fb):
        # Region files store only their universe; align both to the union of names.
        names = [n for n in fa if n not in fb] + [n for n in fb if n not in fa]
        shapes_a = {n: tuple(v.shape) for n, v in fa.items()}
        shapes_b = {n: tuple(v.shape) for n, v in fb.items()}
        if any(shapes_a[n] != shapes_b[n] for n in set(fa) & set(fb)):
            raise UserError(f"{args.a} and {args.b} are regions of different models")
        raise UserError(f"{args.a} and {args.b} cover different tensors (e.g. {names[0]!r}); "
                        "pass --model DIR to compare them over the whole model")
    inter = intersection(a, b)
    uni = union(a, b)
    j = jaccard(a, b)
    sa, sb, si, su = size(a), size(b), size(inter), size(uni)
    print(markdown_table(["", "size"], [(args.a, sa), (args.b, sb), ("intersection", si),
                                        ("union", su), ("A only", sa - si), ("B only", sb - si)]))
    print()
    print(markdown_table(["jaccard", "|A∩B|/|A|", "|A∩B|/|B|"],
                         [(j, si / sa if sa else 0.0, si / sb if sb else 0.0)], digits=6))
    per: dict[str, list[int]] = {}
    fi = T.flatten(inter.mask)
    fu = T.flatten(uni.mask)
    for n in fa:
        acc = per.setdefault(module_type(n), [0, 0, 0, 0])
        acc[0] += int(jnp.sum(jnp.asarray(fa[n], bool)))
        acc[1] += int(jnp.sum(jnp.asarray(fb[n], bool)))
        acc[2] += int(jnp.sum(fi[n]))
        acc[3] += int(jnp.sum(fu[n]))
    rows = [(k, v[0], v[1], v[2], v[2] / v[3] if v[3] else 1.0) for k, v in per.items()
            if v[3] > 0]
    print()
    print(markdown_table(["module", "A", "B", "A∩B", "jaccard"], rows, digits=6))
    if args.json_out:
        io.write_json(args.json_out, {
            "a": args.a, "b": args.b, "size_a": sa, "size_b": sb, "intersection": si,
            "union": su, "jaccard": j,
            "by_module": {r[0]: {"a": r[1], "b": r[2], "intersection": r[3], "jaccard": r[4]}
                          for r in rows}})
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0
