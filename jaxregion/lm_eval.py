"""An lm-evaluation-harness model: ``--model jaxregion``, with the same edits as every command.

Why: researchers measure language competence with lm-evaluation-harness tasks (FLORES,
Belebele, XNLI, ...), not perplexity. This ``LM`` scores and generates with the functional
forward on an (optionally edited) params tree::

    lm_eval --model jaxregion --model_args pretrained=DIR,region=core.safetensors,region_op=zero

Tokenization follows lm-eval's ``hf`` model exactly (``TemplateLM`` splits context and
continuation; the same BOS rule, truncation and rolling windows), so the loglikelihoods of
the unedited model equal ``hf``'s. lm-eval is a dependency of the main install.
Several ``perturb`` specs are separated by ``;``; commas inside ``[...]`` are kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from tqdm.auto import tqdm

from jaxregion import generate, runtime, safety
from jaxregion.configs import TasksConfig
from jaxregion.errors import UserError
from jaxregion.models import ModelConfig, apply

_MIN_BUCKET = 16


def _bucket(n: int, cap: int) -> int:
    """The padded length for ``n`` tokens: a power of two (few compilations), at most ``cap``."""
    return min(cap, max(_MIN_BUCKET, 1 << (n - 1).bit_length()))


def split_model_args(arg_string: str) -> dict[str, str]:
    """``k=v,k=v`` where commas inside brackets belong to the value (perturb specs)."""
    out: dict[str, str] = {}
    depth, start = 0, 0
    parts = []
    for i, ch in enumerate(arg_string + ","):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(arg_string[start:i])
            start = i + 1
    for part in filter(None, (p.strip() for p in parts)):
        key, sep, value = part.partition("=")
        if not sep:
            raise UserError(f"--model_args {part!r}: expected key=value")
        out[key.strip()] = value
    return out


def _scores(
    params: dict, tokens: jax.Array, targets: jax.Array, mask: jax.Array, cfg: ModelConfig
) -> tuple[jax.Array, jax.Array]:
    """Per row: summed log p(target) over ``mask`` and whether every masked target is argmax."""
    logits = apply(params, tokens, cfg).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tgt = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    greedy = (jnp.argmax(logits, axis=-1) == targets) | ~mask
    return jnp.sum(jnp.where(mask, tgt, 0.0), axis=1), jnp.all(greedy, axis=1)


_scores_jit = jax.jit(_scores, static_argnames=("cfg",))


@register_model("jaxregion")
class JaxRegionLM(TemplateLM):
    """lm-eval's ``LM`` over a jaxregion params tree (optionally with a region edit)."""

    def __init__(
        self,
        pretrained: str,
        region: str | None = None,
        region_op: str = "zero",
        perturb: str | Sequence[str] | None = None,
        seed: int | str = 0,
        dtype: str = "float32",
        batch_size: int | str | None = 8,
        max_length: int | str | None = None,
        add_bos_token: bool | None = None,
        max_gen_toks: int | str = 256,
        device: str | None = None,
        max_batch_size: int | None = None,
        mesh: jax.sharding.Mesh | None = None,
    ) -> None:
        super().__init__()
        del device, max_batch_size  # JAX places arrays itself; batches have a fixed size
        if isinstance(perturb, str):
            perturb = [p for p in perturb.split(";") if p.strip()]
        self.session = runtime.load_session(str(pretrained), str(dtype), mesh)
        self.cfg, self.params = runtime.edit_model(
            self.session, region, str(region_op), list(perturb or ()), int(seed)
        )
        self.tokenizer = self.session.tokenizer
        if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
            batch_size = 8
        self._batch_size = int(batch_size)
        self._max_length = int(max_length) if max_length else self.cfg.max_position_embeddings
        self.add_bos_token = add_bos_token
        self._max_gen_toks = int(max_gen_toks)

    @classmethod
    def from_session(
        cls, session: runtime.Session, params: dict, batch_size: int = 8, **kw: Any
    ) -> JaxRegionLM:
        """An LM over an already loaded model and (edited) params: no reload per edit."""
        lm = cls.__new__(cls)
        TemplateLM.__init__(lm)
        lm.session, lm.params, lm.cfg = session, params, session.config
        lm.tokenizer = session.tokenizer
        lm._batch_size = int(batch_size)
        lm._max_length = int(kw.get("max_length") or session.config.max_position_embeddings)
        lm.add_bos_token = kw.get("add_bos_token")
        lm._max_gen_toks = int(kw.get("max_gen_toks", 256))
        return lm

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: dict | None = None
    ) -> JaxRegionLM:
        args: dict[str, Any] = {
            k: lm_utils.handle_arg_string(v) for k, v in split_model_args(arg_string or "").items()
        }
        if "perturb" in args:
            args["perturb"] = str(args["perturb"])
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**args, **extra)

    # -- tokenization, exactly as lm-eval's hf model ---------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(
        self,
        string: str,
        add_special_tokens: bool | None = None,
        left_truncate_len: int | None = None,
        **kwargs: Any,
    ) -> list[int]:
        kw: dict[str, bool] = {}
        if add_special_tokens is not None:
            kw["add_special_tokens"] = add_special_tokens
        elif self.add_bos_token is not None:
            kw["add_special_tokens"] = self.add_bos_token
        if add_special_tokens is None and string.startswith(
            self.tokenizer.decode(self.prefix_token_id)
        ):
            kw["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **kw)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    # -- scoring ---------------------------------------------------------------------------
    def _loglikelihood_tokens(
        self, requests: list, disable_tqdm: bool = False, override_bs: int | None = None
    ) -> list[tuple[float, bool]]:
        """``(logprob, is_greedy)`` of each continuation, batched by padded length."""
        rows = []
        for _, ctx, cont in requests:
            full = (list(ctx) + list(cont))[-(self.max_length + 1) :]
            n_cont = min(len(cont), len(full) - 1)
            rows.append((full, n_cont))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        b = override_bs or self.batch_size
        for start in tqdm(
            range(0, len(order), b),
            disable=disable_tqdm or None,
            desc="jaxregion loglikelihood",
            leave=False,
        ):
            idx = order[start : start + b]
            width = _bucket(max(len(rows[i][0]) - 1 for i in idx), self.max_length)
            tokens = np.zeros((b, width), np.int32)
            targets = np.zeros((b, width), np.int32)
            mask = np.zeros((b, width), bool)
            for r, i in enumerate(idx):
                full, n_cont = rows[i]
                n = len(full) - 1
                tokens[r, :n] = full[:-1]
                targets[r, :n] = full[1:]
                mask[r, n - n_cont : n] = True
            logp, greedy = _scores_jit(
                self.params, jnp.asarray(tokens), jnp.asarray(targets), jnp.asarray(mask), self.cfg
            )
            logp, greedy = np.asarray(logp), np.asarray(greedy)
            for r, i in enumerate(idx):
                out[i] = (float(logp[r]), bool(greedy[r]))
        for (key, _, _), ans in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, ans)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each whole string, in lm-eval's disjoint rolling windows."""
        windows, owner = [], []
        for j, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, ctx, cont))
                owner.append(j)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for j, (lp, _) in zip(owner, scores):
            totals[j] += lp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation ------------------------------------------------------------------------
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Continuations cut at the first stop string (EOS included), as lm-eval's hf does.

        Requests with the same length limit and sampling run as one batched generation."""
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        jobs: dict[tuple[int, generate.Sampling], list[int]] = {}
        prepared = []
        for j, req in enumerate(requests):
            context, gen_kwargs = req.args
            kw = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kw.pop("until", None), eos=eos)
            max_new = int(kw.pop("max_gen_toks"))
            if max_new >= self.max_length:
                raise UserError(
                    f"max_gen_toks {max_new} must be below the model's context ({self.max_length})"
                )
            ids = self.tok_encode(context, left_truncate_len=self.max_length - max_new)
            sampling = generate.Sampling(
                temperature=float(kw.get("temperature") or 0.0) if kw.get("do_sample") else 0.0,
                top_p=float(kw.get("top_p") or 1.0),
                seed=int(kw.get("seed") or 0),
            )
            prepared.append((ids, until))
            jobs.setdefault((max_new, sampling), []).append(j)
        out = [""] * len(requests)
        for (max_new, sampling), idx in tqdm(
            jobs.items(), disable=disable_tqdm or None, desc="jaxregion generate", leave=False
        ):
            res = generate.generate(
                self.params,
                self.cfg,
                [prepared[j][0] for j in idx],
                max_new,
                sampling,
                eos_token_id=self.eot_token_id,
                batch_size=self.batch_size,
            )
            for j, ids in zip(idx, res.token_ids):
                out[j] = postprocess_generated_text(
                    generation=self.tok_decode(ids), stop=prepared[j][1], think_end_token=None
                )
                self.cache_hook.add_partial("generate_until", requests[j].args, out[j])
        return out


def finite_or_none(obj: Any) -> Any:
    """lm-eval's results as strict JSON: NaN/inf become null, other oddities strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, np.generic):
        return finite_or_none(obj.item())
    return str(obj)


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads lm-eval task YAMLs for syntax only: their ``!function`` tags are accepted."""


_TaskYamlLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _data_files(node: Any) -> list[str]:
    """The paths a task YAML's ``dataset_kwargs.data_files`` names (str, list or mapping)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [p for v in node.values() for p in _data_files(v)]
    if isinstance(node, list):
        return [p for v in node for p in _data_files(v)]
    return []


def _check_task_yamls(include_path: str) -> None:
    """UserError naming the first task YAML under ``include_path`` that is not valid YAML
    (lm-eval skips it with a warning, and its task then looks unknown). The data files the
    YAMLs name are inputs of the command (:func:`safety.reading`): no output replaces them."""
    for d, _, files in sorted(os.walk(include_path)):
        for name in sorted(files):
            if not name.endswith((".yaml", ".yml")):
                continue
            p = os.path.join(d, name)
            try:
                with open(p, encoding="utf-8") as f:
                    doc = yaml.load(f, Loader=_TaskYamlLoader)  # noqa: S506 (SafeLoader)
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                mark = getattr(e, "problem_mark", None)
                at = f":{mark.line + 1}" if mark is not None else ""
                why = getattr(e, "problem", None) or str(e).splitlines()[0]
                raise UserError(
                    f"{p}{at}: not valid YAML ({why}); lm-eval cannot read the task it defines"
                ) from None
            kwargs = doc.get("dataset_kwargs") if isinstance(doc, dict) else None
            if isinstance(kwargs, dict):
                safety.reading(
                    *(f for f in _data_files(kwargs.get("data_files")) if os.path.isfile(f))
                )


def check_tasks(tasks: Sequence[str], include_path: str | None = None):
    """A TaskManager that knows every task in ``tasks``; unknown names are a UserError."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not os.path.isdir(include_path):
        raise UserError(f"--include-path {include_path}: no such directory")
    if include_path is not None:
        _check_task_yamls(include_path)
    manager = TaskManager(include_path=include_path)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if not tasks or unknown:
        where = f" (nor in {include_path})" if include_path else ""
        raise UserError(
            f"unknown lm-eval task(s): {', '.join(unknown) or '(none given)'}; "
            f"not among lm-eval's tasks{where}; list them with `lm_eval ls tasks`"
        )
    return manager


def evaluate_lm(
    lm: JaxRegionLM,
    tasks: Sequence[str],
    include_path: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 0,
    manager: Any = None,
) -> dict:
    """lm-eval's results dict (strict-JSON-safe, without per-sample logs) for ``tasks``;
    ``bootstrap_iters`` > 0 adds standard errors."""
    import lm_eval

    manager = manager or check_tasks(tasks, include_path)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        bootstrap_iters=bootstrap_iters,
    )
    return finite_or_none({k: v for k, v in out.items() if k != "samples"})


def run_tasks(
    model: str,
    tasks: Sequence[str],
    include_path: str | None = None,
    region: str | None = None,
    region_op: str = "zero",
    perturb: Sequence[str] = (),
    seed: int = 0,
    dtype: str = "float32",
    batch_size: int = 8,
    limit: int | None = None,
    num_fewshot: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """:func:`evaluate_lm` on a model directory with an optional edit (on ``mesh``; None:
    every device on ``data``); task names are checked before the model is loaded."""
    manager = check_tasks(tasks, include_path)
    lm = JaxRegionLM(
        pretrained=model,
        region=region,
        region_op=region_op,
        perturb=list(perturb),
        seed=seed,
        dtype=dtype,
        batch_size=batch_size,
        mesh=mesh,
    )
    return evaluate_lm(
        lm, tasks, include_path, limit, num_fewshot, bootstrap_iters=1000, manager=manager
    )


def markdown(results: dict) -> str:
    """lm-eval's own Markdown table(s) of a results dict."""
    text = lm_utils.make_table(results)
    if results.get("groups"):
        text += "\n" + lm_utils.make_table(results, "groups")
    return text


def run_tasks_config(cfg: TasksConfig, mesh: jax.sharding.Mesh | None = None) -> dict:
    """``jaxregion tasks``: :func:`run_tasks` from its config."""
    return run_tasks(
        cfg.model,
        list(cfg.tasks),
        cfg.include_path,
        cfg.region,
        cfg.region_op,
        cfg.perturb,
        cfg.seed,
        cfg.dtype,
        cfg.batch_size,
        cfg.limit,
        cfg.num_fewshot,
        mesh=mesh,
    )
