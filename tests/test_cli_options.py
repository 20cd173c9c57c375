"""Every command's flags and YAML keys come from its config dataclass: ``--help`` lists exactly
its options, a YAML config and the same values as flags give the same config (and the same
run), and values are checked the same way from both."""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import re
import typing

import numpy as np
import pytest
import yaml

from jaxregion import strict_loader as C
from jaxregion.cli import options
from jaxregion.cli.main import build_parser
from jaxregion.cli.main import main as cli_main
from jaxregion.configs import LaunchConfig
from jaxregion.errors import UserError

build_parser()  # fills options.REGISTRY
COMMANDS = {" ".join(c.words): c for c in options.REGISTRY}


def test_every_command_is_declared_once() -> None:
    assert set(COMMANDS) >= {
        "eval",
        "train",
        "export",
        "pretrain",
        "forgetting",
        "importance",
        "regions core",
        "regions bottom",
        "regions random",
        "regions monolingual",
        "regions bottom-monolingual",
        "regions top",
        "regions stats",
        "regions compare",
        "experiment",
        "dims",
        "demo",
        "plan",
        "generate",
        "tasks",
    }
    assert len(COMMANDS) == len(options.REGISTRY)


# --- --help lists exactly the dataclass's options --------------------------------------------
def _subparser(words: tuple[str, ...]):
    p = build_parser()
    for w in words:
        sub = next(a for a in p._actions if isinstance(a, type(p._subparsers._group_actions[0])))
        p = sub.choices[w]
    return p


def _flaggable(tp) -> bool:
    """Scalars, bools, tuples of scalars and {str: str} maps have flags; nested sections not."""
    tp = C.strip_optional(tp)[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in (bool, int, float, str):
        return True
    if origin in (tuple, collections.abc.Sequence):
        return bool(args) and args[0] in (int, float, str)
    return origin in (dict, collections.abc.Mapping) and args == (str, str)


def _expected(cmd: options.Command) -> tuple[set[str], set[str]]:
    """(option strings, positional names) from the dataclass fields, by the naming rule."""
    opts, pos, seen = {"-h", "--help", "--config"}, set(), set()
    for cls in (cmd.config, LaunchConfig):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in seen or f.name in cmd.fixed:
                continue
            seen.add(f.name)
            if f.metadata.get("flag") is False or not _flaggable(hints[f.name]):
                continue
            if f.metadata.get("positional"):
                pos.add(f.name.upper())
            elif f.metadata.get("flag"):
                opts.add(f.metadata["flag"])
            elif hints[f.name] is bool and f.default is True:
                opts.add("--no-" + f.name.replace("_", "-"))
            else:
                opts.add("--" + f.name.replace("_", "-"))
    return opts, pos


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_lists_exactly_the_dataclass_options(name: str) -> None:
    cmd = COMMANDS[name]
    text = _subparser(cmd.words).format_help()
    listed = set()
    for line in text.splitlines():
        m = re.match(r"^  (-[\w-]+(?:, --[\w-]+)?)", line)
        if m:
            listed.update(s.strip() for s in m.group(1).split(","))
    pos = set(re.findall(r"^  ([A-Z][A-Z_]*)\b", text, re.M)) - {"CONFIG"}
    want_opts, want_pos = _expected(cmd)
    assert listed == want_opts
    assert pos == want_pos
    assert ("CONFIG" in text.split("options:")[0]) == cmd.positional_config


# --- YAML == flags ----------------------------------------------------------------------------
def _sample(f: dataclasses.Field, tp):
    """A valid, non-default value for field ``f`` (type ``tp``)."""
    md = f.metadata
    base = C.strip_optional(tp)[0]
    if "choices" in md and base is str:
        return [c for c in md["choices"] if c != f.default][-1]
    if base is bool:
        return not f.default
    if base is int:
        return 3 if f.default in (None, dataclasses.MISSING) or f.default != 3 else 5
    if base is float:
        return 0.25 if f.default != 0.25 else 0.5
    if base is str:
        return f"{f.name}-value"
    args = typing.get_args(base)
    if typing.get_origin(base) in (dict, collections.abc.Mapping):
        return {"aa": "source-a", "bb": "source-b"}
    if args[0] is str:
        return ["aa", "bb"]
    return [5, 6] if args[0] is int else [2.0, 0.5]


# Values a command's cross-field checks need, and YAML-only sections (in both runs).
OVERRIDES = {
    "train": {"batch_size": 6, "grad_accum": 3},
    "pretrain": {"batch_size": 6, "grad_accum": 3},
    "regions core": {"lang": None},
    "regions bottom": {"lang": None},
    "regions random": {"lang": None},
    "regions monolingual": {"lang": "aa"},
    "regions top": {"lang": "aa"},
    "regions bottom-monolingual": {"lang": "aa"},
    "plan": {"preset": None},
    "experiment": {"monolingual": ["aa"], "ratios": [0.5, 0.2]},
    "forgetting": {"target": "aa"},
    "importance": {"until_stable": None, "max_seqs": 8, "estimator": "wanda"},
    "demo": {
        "forgetting_ratios": [0.5, 0.2],
        "forgetting_granularities": ["row", "tensor"],
        "corpus": "synthetic",
        "valid_text": {},
    },
}
YAML_ONLY = {
    "forgetting": {"settings": [{"name": "none"}, {"name": "l0", "layers": [0]}]},
}


def _flags(cmd: options.Command, values: dict) -> list[str]:
    argv: list[str] = []
    hints = {**typing.get_type_hints(LaunchConfig), **typing.get_type_hints(cmd.config)}
    fields = {f.name: f for cls in (LaunchConfig, cmd.config) for f in dataclasses.fields(cls)}
    for name, v in values.items():
        f, tp = fields[name], hints[name]
        flag = options.flag_of(f, tp)
        if v is None:
            continue
        if f.metadata.get("positional"):
            argv.append(str(v))
        elif isinstance(v, bool):
            argv.append(flag)
        elif isinstance(v, dict):
            for k, x in v.items():
                argv += [flag, f"{k}={x}"]
        elif isinstance(v, list):
            if f.metadata.get("sep"):
                argv += [flag, ",".join(map(str, v))]
            else:
                for x in v:
                    argv += [flag, str(x)]
        else:
            argv += [flag, str(v)]
    return argv


def _parse(argv: list[str]):
    return options.parse(build_parser().parse_args(argv))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_yaml_equals_flags(name: str, tmp_path) -> None:
    cmd = COMMANDS[name]
    values = {}
    for cls, fixed in ((cmd.config, cmd.fixed), (LaunchConfig, {})):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if (
                f.name in fixed
                or f.name in values
                or not _flaggable(hints[f.name])
                or f.metadata.get("flag") is False
                or f.name == "debug"
            ):
                continue
            values[f.name] = _sample(f, hints[f.name])
    values.update(OVERRIDES.get(name, {}))
    if name == "forgetting":
        values["evals"] = {"aa": "x", "bb": "y"}
    full = tmp_path / "full.yaml"
    full.write_text(
        yaml.safe_dump(
            {**{k: v for k, v in values.items() if v is not None}, **YAML_ONLY.get(name, {})}
        )
    )
    only = tmp_path / "yaml_only.yaml"
    only.write_text(yaml.safe_dump(YAML_ONLY.get(name, {})))
    from_yaml = _parse([*cmd.words, "--config", str(full)])
    from_flags = _parse([*cmd.words, "--config", str(only), *_flags(cmd, values)])
    assert from_yaml == from_flags
    # and every sampled value really arrived (none left at its default)
    cfg = from_flags[0]
    for k, v in values.items():
        got = getattr(cfg, k) if hasattr(cfg, k) else getattr(from_flags[1], k)
        if isinstance(v, list):
            v = tuple(v)
        assert got == v, k


def test_flags_override_yaml_and_positional_config(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("model: m\ntext: {aa: a.txt}\nseq_len: 64\nmesh: data=1\n")
    cfg, launch = _parse(["eval", "--config", str(p), "--seq-len", "32", "--text", "bb=b.txt"])
    assert cfg.seq_len == 32 and dict(cfg.text) == {"bb": "b.txt"} and launch.mesh == "data=1"
    q = tmp_path / "e.yaml"
    q.write_text("model: m\nlanguages: {aa: a, bb: b}\n")
    a = _parse(["experiment", str(q), "--out", "o"])[0]
    b = _parse(["experiment", "--config", str(q), "--out", "o"])[0]
    assert a == b and a.out == "o"


# --- checked the same way from flags and files --------------------------------------------------
@pytest.mark.parametrize(
    "yaml_text, words",
    [
        ("steps: true\n", ["steps", "expected an integer, got True"]),
        ("steps: 1180591620717411303424\n", ["steps", "out of range"]),
        ("steps: 0\n", ["steps", "must be positive"]),
        ("steps: 3\nlr: .nan\n", ["lr", "not a finite number"]),
        ("steps: 3\nschedule: wavy\n", ["schedule", "'wavy' is not one of"]),
        ("stepz: 3\n", ["unknown key 'stepz'"]),
        ("- 1\n", ["expected a mapping"]),
    ],
)
def test_bad_yaml_values_name_file_and_key(yaml_text, words, tmp_path, capsys) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    assert cli_main(["train", "--config", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("jaxregion train: error: "), err
    assert str(p) in err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--steps", "true"], ["--steps", "expected an integer"]),
        (["--steps", str(2**70)], ["--steps", "out of range"]),
        (["--lr", "inf", "--steps", "2"], ["--lr", "not a finite number"]),
        (["--steps", "2", "--b1", "1.5"], ["--b1", "less than 1"]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
        (["--steps", "2"], ["--text is required"]),
    ],
)
def test_bad_flags_one_line(argv, words, capsys) -> None:
    assert cli_main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err and "Traceback" not in err, err
    for w in words:
        assert w in err, err


def test_library_checks_configs_built_in_code() -> None:
    from jaxregion.configs import TrainConfig

    with pytest.raises(UserError, match="steps: must be positive"):
        TrainConfig(steps=0).validate()
    with pytest.raises(UserError, match="grad-accum"):
        TrainConfig(steps=1, batch_size=4, grad_accum=3).validate()


# --- real runs: YAML and flags give the same results ------------------------------------------
def test_eval_yaml_and_flags_same_run(model_factory, corpus_dir, tmp_path) -> None:
    model = model_factory("llama_mha")
    text = {"lat": f"{corpus_dir}/lat.txt", "rom": f"{corpus_dir}/rom.txt"}
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "model": model,
                "text": text,
                "seq_len": 16,
                "max_seqs": 4,
                "batch_size": 2,
                "json_out": str(tmp_path / "a.json"),
            }
        )
    )
    assert cli_main(["eval", "--config", str(cfg), "--no-progress"]) == 0
    assert (
        cli_main(
            [
                "eval",
                "--model",
                model,
                "--text",
                f"lat={text['lat']}",
                "--text",
                f"rom={text['rom']}",
                "--seq-len",
                "16",
                "--max-seqs",
                "4",
                "--batch-size",
                "2",
                "--json",
                str(tmp_path / "b.json"),
                "--no-progress",
            ]
        )
        == 0
    )
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a == b and set(a["perplexity"]) == {"lat", "rom"}


def test_regions_yaml_and_flags_same_file(tmp_path) -> None:
    from jaxregion import regions

    rng = np.random.default_rng(0)
    imp = tmp_path / "imp"
    for lang in ("aa", "bb"):
        tree = {
            "model": {
                "layers": [
                    {"mlp": {"up_proj": {"weight": rng.normal(size=(8, 4))}}} for _ in range(2)
                ]
            }
        }
        regions.save_scores(str(imp / f"{lang}.safetensors"), tree, {"estimator": "taylor"})
    cfg = tmp_path / "r.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "importance": str(imp),
                "lang": "bb",
                "ratio": 0.25,
                "scope": "global",
                "out": str(tmp_path / "a.safetensors"),
            }
        )
    )
    assert cli_main(["regions", "monolingual", "--config", str(cfg)]) == 0
    assert (
        cli_main(
            [
                "regions",
                "monolingual",
                "--importance",
                str(imp),
                "--lang",
                "bb",
                "--ratio",
                "0.25",
                "--scope",
                "global",
                "--out",
                str(tmp_path / "b.safetensors"),
            ]
        )
        == 0
    )
    a, b = (regions.load_region(str(tmp_path / n)) for n in ("a.safetensors", "b.safetensors"))
    assert a.meta == b.meta and a.size > 0
    for n, m in a.flat().items():
        np.testing.assert_array_equal(np.asarray(m), np.asarray(b.flat()[n]), err_msg=n)


def test_field_check_hook_runs_on_flags_yaml_and_elements(tmp_path) -> None:
    """``option(check=...)``: a rule beyond bounds and choices, on every value and element."""
    from dataclasses import dataclass

    def no_spaces(v: str, where: str) -> None:
        if " " in v:
            raise UserError(f"{where}: no spaces please")

    @dataclass(frozen=True, kw_only=True)
    class Cfg:
        name: str = C.option("a", check=no_spaces, help="a name")
        texts: dict[str, str] = C.option(factory=dict, check=no_spaces, help="texts")

    assert C.from_dict(Cfg, {"name": "ok", "texts": {"x": "y"}}, "f.yaml").name == "ok"
    with pytest.raises(UserError, match="f.yaml: name: no spaces"):
        C.from_dict(Cfg, {"name": "a b"}, "f.yaml")
    with pytest.raises(UserError, match=r"f.yaml: texts.x: no spaces"):
        C.from_dict(Cfg, {"texts": {"x": "a b"}}, "f.yaml")
    with pytest.raises(TypeError, match="unknown metadata"):
        C.option(1, help="h", positve=True)
