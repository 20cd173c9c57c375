"""The lm-evaluation-harness model: parity with lm-eval's ``hf`` model on local tasks, offline."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("lm_eval")

from conftest import run_cli  # noqa: E402

from jaxregion import regions
from jaxregion.data import synthetic  # noqa: E402
from jaxregion.io import hf  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_tasks(d) -> str:
    """Three tiny local tasks (multiple choice, rolling loglikelihood, generation) + data."""
    docs = list(synthetic.generate("lat", 6, seed=5))
    with open(d / "mc.jsonl", "w", encoding="utf-8") as f:
        for i, doc in enumerate(docs[:4]):
            words = doc.split()
            choices = [" ".join(words[3:6]), " ".join(words[6:9]), " Ana.", " 42 17."]
            f.write(
                json.dumps({"query": " ".join(words[:3]), "choices": choices, "gold": i % 4}) + "\n"
            )
    with open(d / "text.jsonl", "w", encoding="utf-8") as f:
        for doc in docs[4:]:
            f.write(json.dumps({"text": doc}) + "\n")
    common = "test_split: test\n"
    (d / "jr_mc.yaml").write_text(
        "task: jr_mc\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'mc.jsonl'}\n"
        + common
        + "output_type: multiple_choice\ndoc_to_text: '{{query}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{gold}}'\nmetric_list:\n  - metric: acc\n"
    )
    (d / "jr_roll.yaml").write_text(
        "task: jr_roll\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'text.jsonl'}\n"
        + common
        + "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n"
    )
    (d / "jr_gen.yaml").write_text(
        "task: jr_gen\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {d / 'text.jsonl'}\n"
        + common
        + "output_type: generate_until\ndoc_to_text: '{{text[:12]}}'\ndoc_to_target: '{{text}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return str(d)


def _responses(lm, task_dir: str, tasks: list[str]) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=TaskManager(include_path=task_dir),
        log_samples=True,
        bootstrap_iters=0,
    )
    return {t: [s["resps"] for s in out["samples"][t]] for t in tasks}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> str:
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def _flat(resps) -> list[float]:
    vals = []
    for r in resps:
        for x in r:
            x = x[0] if isinstance(x, list) else x
            vals.append(float(x[0]) if isinstance(x, tuple | list) else float(x))
    return vals


@pytest.mark.parametrize("family", ["llama_gqa_llama3", "gpt2", "mixtral"])
@pytest.mark.slow
def test_loglikelihoods_match_hf(family, model_factory, task_dir, tmp_path):
    from lm_eval.models.huggingface import HFLM

    from jaxregion.lm_eval import JaxRegionLM

    path = model_factory(family)
    tasks = ["jr_mc", "jr_roll", "jr_gen"]
    ref = _responses(
        HFLM(pretrained=path, device="cpu", dtype="float32", batch_size=3), task_dir, tasks
    )
    ours_lm = JaxRegionLM(pretrained=path, batch_size=3)
    ours = _responses(ours_lm, task_dir, tasks)
    for t in ("jr_mc", "jr_roll"):
        a, b = _flat(ref[t]), _flat(ours[t])
        assert len(a) == len(b) > 0
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, t
    # is_greedy flags agree too
    flags = [[c[0][1] for c in choices] for choices in ref["jr_mc"]]
    assert flags == [[c[0][1] for c in choices] for choices in ours["jr_mc"]]
    assert ref["jr_gen"] == ours["jr_gen"]  # greedy text, cut at the stop string

    _, params = hf.load(path)
    rfile = str(tmp_path / "r.safetensors")
    regions.save_region(rfile, regions.random(params, ratio=0.2, seed=1))
    edited = JaxRegionLM.create_from_arg_string(
        f"pretrained={path},region={rfile},region_op=zero", {"batch_size": 3}
    )
    changed = _flat(_responses(edited, task_dir, ["jr_mc"])["jr_mc"])
    assert max(abs(x - y) for x, y in zip(_flat(ours["jr_mc"]), changed)) > 1e-2


def test_model_args_keep_commas_inside_brackets():
    from jaxregion.lm_eval import split_model_args

    got = split_model_args(
        "pretrained=/m,perturb=model.norm.weight[:,3]*4;lm_head.weight[1,2]+1,region_op=scale:0.5"
    )
    assert got == {
        "pretrained": "/m",
        "perturb": "model.norm.weight[:,3]*4;lm_head.weight[1,2]+1",
        "region_op": "scale:0.5",
    }


@pytest.mark.slow
def test_tasks_cli_writes_json_and_markdown(model_factory, task_dir, tmp_path):
    out = tmp_path / "res.json"
    code, stdout, err = run_cli(
        "tasks",
        "--model",
        model_factory("llama_mha"),
        "--tasks",
        "jr_mc,jr_roll",
        "--include-path",
        task_dir,
        "--json",
        str(out),
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    assert set(res["results"]) == {"jr_mc", "jr_roll"}
    assert 0 <= res["results"]["jr_mc"]["acc,none"] <= 1
    assert "jr_mc" in stdout and "|" in stdout
    assert (tmp_path / "res.md").read_text().strip() == stdout.strip()


@pytest.mark.slow
def test_tasks_cli_unknown_task(model_factory, task_dir, tmp_path):
    out = tmp_path / "res.json"
    code, stdout, err = run_cli(
        "tasks",
        "--model",
        model_factory("llama_mha"),
        "--tasks",
        "jr_mc,no_such_task",
        "--include-path",
        task_dir,
        "--json",
        str(out),
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "no_such_task" in err
    assert not out.exists()
