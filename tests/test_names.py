"""Names are data, never paths (issue 11): a random language name is either refused with one
line, or every file the command writes stays inside ``--out``; partial state is removed only
when its ownership marker matches."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxregion import safety
from jaxregion.cli.main import main
from jaxregion.errors import UserError
from jaxregion.parallel import distributed

TRICKY = [
    "..",
    ".",
    "/",
    "a/b",
    "../../x",
    "/abs",
    "zh-Hans",
    "pt_BR",
    "en",
    "model",
    "x" * 64,
    "x" * 65,
    "-x",
    "_x",
    "a\\b",
    "a\x00b",
    "ü",
    "🙂",
    " en",
    "en ",
    "a.b",
    "CON",
    "~",
    "$HOME",
    "a:b",
]
names = st.one_of(
    st.sampled_from(TRICKY),
    st.text(min_size=0, max_size=20),
    st.from_regex(safety.NAME_PATTERN, fullmatch=True),
)


def _listing(root: str) -> set[str]:
    out = set()
    for d, dirs, files in os.walk(root):
        out.update(os.path.join(d, x) for x in dirs + files)
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, model_factory, corpus_dir):
    root = str(tmp_path_factory.mktemp("names"))
    model = os.path.join(root, "model")
    shutil.copytree(model_factory("llama_mha"), model)
    text = os.path.join(root, "lat.txt")
    shutil.copy(os.path.join(corpus_dir, "lat.txt"), text)
    return root, model, text


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=names)
def test_random_language_name_is_refused_or_stays_inside_out(sandbox, name, capsys):
    root, model, text = sandbox
    out = os.path.join(root, "out")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    parent = os.path.dirname(root)
    before_root, before_parent = _listing(root), set(os.listdir(parent))
    distributed.shutdown()
    capsys.readouterr()
    code = main(
        [
            "importance",
            "--model",
            model,
            "--text",
            f"{name}={text}",
            "--seq-len",
            "16",
            "--estimator",
            "magnitude",
            "--out",
            out,
        ]
    )
    err = capsys.readouterr().err
    if code == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "error:" in lines[0], err
    else:
        assert code == 0, err
        assert os.path.isfile(os.path.join(out, f"{name.strip()}.safetensors"))
    created = _listing(root) - before_root
    real_out = os.path.realpath(out)
    for p in created:
        assert os.path.realpath(p).startswith(real_out + os.sep), f"{name!r} wrote {p}"
    assert set(os.listdir(parent)) == before_parent


def test_name_pattern_examples():
    for ok in ("en", "zh-Hans", "pt_BR", "x" * 64, "0"):
        assert safety.check_name(ok, "t") == ok
    for bad in ("", "..", "a/b", "/abs", ".x", "-x", "x" * 65, "a b", "ü", None, 3):
        with pytest.raises(UserError):
            safety.check_name(bad, "t")


def test_inside_follows_symlinks(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "out" / "link")
    assert safety.inside(str(tmp_path / "out"), str(tmp_path / "out" / "a.txt"))
    with pytest.raises(UserError, match="outside the output directory"):
        safety.inside(str(tmp_path / "out"), str(tmp_path / "out" / "link" / "a.txt"))


def test_partial_state_removed_only_with_matching_marker(tmp_path):
    owner = {"made_by": "jaxregion importance", "language": "en"}
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    assert not safety.remove_owned(str(foreign), owner)  # no marker: left alone
    safety.claim(str(tmp_path / "mine"), {**owner, "language": "fr"})
    assert not safety.remove_owned(str(tmp_path / "mine"), owner)  # another owner
    assert (foreign / "precious.txt").read_text() == "keep me"
    safety.claim(str(tmp_path / "ours"), owner)
    assert safety.remove_owned(str(tmp_path / "ours"), owner)
    assert not (tmp_path / "ours").exists()


def test_foreign_partial_dir_is_refused_not_deleted(sandbox, capsys):
    root, model, text = sandbox
    out = os.path.join(root, "out_partial")
    victim = os.path.join(out, ".partial", "lat")
    os.makedirs(victim, exist_ok=True)
    with open(os.path.join(victim, "precious.txt"), "w") as f:
        f.write("keep me")
    distributed.shutdown()
    capsys.readouterr()
    code = main(
        [
            "importance",
            "--model",
            model,
            "--text",
            f"lat={text}",
            "--seq-len",
            "16",
            "--max-seqs",
            "2",
            "--out",
            out,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "not made by jaxregion" in err and len(err.splitlines()) == 1, err
    assert open(os.path.join(victim, "precious.txt")).read() == "keep me"


def test_outputs_keep_the_umask(sandbox, capsys):
    root, model, text = sandbox
    out = os.path.join(root, "out_umask")
    old = os.umask(0o022)
    try:
        distributed.shutdown()
        assert (
            main(
                [
                    "importance",
                    "--model",
                    model,
                    "--text",
                    f"lat={text}",
                    "--seq-len",
                    "16",
                    "--estimator",
                    "magnitude",
                    "--out",
                    out,
                ]
            )
            == 0
        )
    finally:
        os.umask(old)
    mode = os.stat(os.path.join(out, "lat.safetensors")).st_mode & 0o777
    assert mode == 0o644, oct(mode)
