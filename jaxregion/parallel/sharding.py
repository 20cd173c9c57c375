"""Meshes and shardings. Consulted by hf, evaluate, importance and train; never the reverse.

The mesh has three axes, ``("data", "fsdp", "tensor")``:

* ``data``   -- pure data parallelism: batches split, params replicated;
* ``fsdp``   -- batches split *and* params sharded over their embed (hidden) axis;
* ``tensor`` -- tensor parallelism: heads (q/kv), the MLP intermediate and the vocab split.

There is no global mesh: callers pass one (the CLI builds it from ``--mesh``); where a
function takes ``mesh=None``, that means a fresh mesh with every device on ``data``.
Which tensor dimension goes to which mesh axis is decided by the logical axes of the family
tables (:mod:`jaxregion.models`, carried by each ``nnx.Param`` as ``out_sharding``) and the
rules below, per dimension, with a fallback to replication wherever a dimension does not
divide (8 kv dims on 16-way tensor parallelism are replicated, never an error).

The same :func:`param_shardings` tree places params, importance accumulators, region masks
and (through :func:`shardings_like`) optimizer state, since all of them are HF-named trees.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxregion import tree as T
from jaxregion.errors import UserError
from jaxregion.models import spec as mspec
from jaxregion.strict_loader import from_dict, read_mapping

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis (or None: replicated along that dimension).
DEFAULT_RULES: dict[str, str | None] = {
    "embed": "fsdp",  # FSDP over the hidden size
    "vocab": "tensor",  # vocab-parallel embedding / lm head
    "q": "tensor",  # heads * head_dim
    "kv": "tensor",  # kv_heads * head_dim (replicated when it does not divide)
    "qkv": "tensor",  # fused q/k/v outputs (GPT-2, BLOOM, Phi-3)
    "gate_up": "tensor",  # Phi-3's fused gate/up output
    "heads": None,  # head counts (cohere's per-head q/k norms): tiny
    "kv_heads": None,
    "mlp": "tensor",  # intermediate size
    "head": None,  # head_dim (q/k norms): tiny
    "pos": None,  # learned positions: small, gathered every step
    "expert": "tensor",  # routed experts: expert parallelism over the tensor axis
    "expert_mlp": "tensor",  # an expert's hidden size (used when experts do not divide)
    "expert_gate_up": "tensor",
    "shared_mlp": "tensor",  # qwen2_moe's shared expert
    "one": None,  # the shared expert's single gate output
}
# Per-family overrides of DEFAULT_RULES live in the family tables (``SHARDING_RULES``).


# --- mesh configuration --------------------------------------------------------------------
@dataclass(frozen=True)
class MeshConfig:
    """``mesh: {data: -1, fsdp: 1, tensor: 1}``; one axis may be -1 (= the remaining devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        sizes = [self.data, self.fsdp, self.tensor]
        for a, s in zip(AXES, sizes):
            if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or (s < 1 and s != -1):
                raise UserError(f"mesh axis {a}={s!r}: must be a positive integer or -1")
        if sizes.count(-1) > 1:
            raise UserError(f"mesh {self.spec()}: at most one axis may be -1")

    def spec(self) -> str:
        return ",".join(f"{a}={getattr(self, a)}" for a in AXES)

    def resolve(self, n_devices: int) -> dict[str, int]:
        """``{axis: size}`` for ``n_devices`` devices (the -1 filled in)."""
        sizes = {a: int(getattr(self, a)) for a in AXES}
        known = int(np.prod([s for s in sizes.values() if s != -1]))
        for a, s in sizes.items():
            if s == -1:
                if n_devices % known:
                    raise UserError(
                        f"mesh {self.spec()}: {n_devices} devices do not divide by {known}"
                    )
                sizes[a] = n_devices // known
        if int(np.prod(list(sizes.values()))) != n_devices:
            raise UserError(
                f"mesh {dict(sizes)} needs {int(np.prod(list(sizes.values())))} "
                f"devices, have {n_devices}"
            )
        return sizes

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "mesh") -> MeshConfig:
        """From ``{data: .., fsdp: .., tensor: ..}`` (or ``{mesh: {...}}``), strictly."""
        d = dict(d or {})
        if "mesh" in d and isinstance(d["mesh"], Mapping):
            d, where = dict(d["mesh"]), f"{where}: mesh"
        return from_dict(cls, d, where)

    @classmethod
    def parse(cls, text: str) -> MeshConfig:
        """``"data=1,fsdp=4,tensor=2"`` (omitted axes keep their defaults), or a YAML file."""
        text = text.strip()
        if text.endswith((".yaml", ".yml")) or os.path.isfile(text):
            return load_mesh_config(text)
        out: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, eq, val = part.partition("=")
            if not eq:
                raise UserError(
                    f"--mesh {text!r}: expected AXIS=SIZE[,AXIS=SIZE...], e.g. "
                    "data=1,fsdp=4,tensor=2"
                )
            try:
                out[key.strip()] = int(val)
            except ValueError:
                raise UserError(f"--mesh {text!r}: {val!r} is not an integer") from None
        if "data" not in out and -1 in out.values():
            out["data"] = 1
        return cls.from_dict(out, f"--mesh {text!r}")


def load_mesh_config(path: str) -> MeshConfig:
    """A YAML file ``mesh: {data: .., fsdp: .., tensor: ..}`` (or the bare mapping)."""
    return MeshConfig.from_dict(read_mapping(path), path)


def make_mesh(
    data: int | None = None,
    fsdp: int | None = None,
    tensor: int | None = None,
    devices=None,
    config: MeshConfig | None = None,
) -> Mesh:
    """A ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all, over all processes).

    Without sizes or ``config``, every device on ``data``. Devices are laid out
    process-major, so ``tensor`` (innermost) stays within a host."""
    devices = list(jax.devices() if devices is None else devices)
    if config is None:
        config = MeshConfig(
            -1 if data is None else data,
            1 if fsdp is None else fsdp,
            1 if tensor is None else tensor,
        )
    sizes = config.resolve(len(devices))
    devices.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices, dtype=object).reshape([sizes[a] for a in AXES]), AXES)


def mesh_from_config(cfg: MeshConfig, devices=None) -> Mesh:
    return make_mesh(devices=devices, config=cfg)


# --- parameter shardings -------------------------------------------------------------------
def rules_for(
    cfg: Any = None, rules: Mapping[str, str | None] | None = None
) -> dict[str, str | None]:
    out = dict(DEFAULT_RULES)
    if cfg is not None:
        from jaxregion.models.registry import family

        out.update(getattr(family(cfg.model_type), "SHARDING_RULES", {}))
    if rules:
        out.update(rules)
    return out


def spec_for(
    axes: tuple[str, ...],
    shape: tuple[int, ...],
    mesh: Mesh,
    rules: Mapping[str, str | None] = DEFAULT_RULES,
) -> P:
    """The PartitionSpec of one tensor: each dimension goes to its rule's mesh axis when that
    axis has size > 1, divides the dimension and is not already used by another dimension;
    otherwise the dimension is replicated."""
    used: set[str] = set()
    out: list[str | None] = []
    for ax, n in zip(axes, shape):
        m = rules.get(ax)
        size = mesh.shape.get(m, 1) if m else 1
        if m and size > 1 and m not in used and n % size == 0:
            out.append(m)
            used.add(m)
        else:
            out.append(None)
    while out and out[-1] is None:
        out.pop()
    return P(*out)


def param_specs(
    cfg: Any, mesh: Mesh, rules: Mapping[str, str | None] | None = None
) -> dict[str, P]:
    """``{hf_name: PartitionSpec}`` for every parameter of ``cfg``."""
    r = rules_for(cfg, rules)
    shp = mspec.shapes(cfg)
    return {n: spec_for(axes, shp[n], mesh, r) for n, axes in mspec.logical_axes(cfg).items()}


def param_shardings(
    cfg: Any, mesh: Mesh, rules: Mapping[str, str | None] | None = None
) -> T.PyTree:
    """A tree like the params with a ``NamedSharding`` per leaf.

    Also the sharding of importance accumulators, region masks and (see
    :func:`shardings_like`) optimizer state: they are trees of the same HF names."""
    return T.unflatten(
        {n: NamedSharding(mesh, s) for n, s in param_specs(cfg, mesh, rules).items()}
    )


def placement(
    cfg: Any, mesh: Mesh | None, rules: Mapping[str, str | None] | None = None
) -> Callable[[str, tuple[int, ...]], NamedSharding | None] | None:
    """The ``sharding=`` argument of :func:`jaxregion.io.hf.load_params` for this mesh (None on a
    single device: the plain, unsharded path)."""
    if mesh is None or (mesh.size == 1 and jax.process_count() == 1):
        return None
    specs = param_specs(cfg, mesh, rules)

    def place(name: str, shape: tuple[int, ...]) -> NamedSharding:
        return NamedSharding(mesh, specs.get(name, P()))

    return place


def abstract_sharded(
    cfg: Any, mesh: Mesh, dtype: Any = np.float32, rules: Mapping[str, str | None] | None = None
) -> T.PyTree:
    """``ShapeDtypeStruct`` params carrying their shardings: lower/compile without memory."""
    specs = param_specs(cfg, mesh, rules)
    return T.unflatten(
        {
            n: jax.ShapeDtypeStruct(s, dtype, sharding=NamedSharding(mesh, specs[n]))
            for n, s in mspec.shapes(cfg).items()
        }
    )


def _shape(x: Any) -> tuple[int, ...] | None:
    s = getattr(x, "shape", None)
    return None if s is None else tuple(s)


def shardings_like(tree: T.PyTree, shardings: T.PyTree, mesh: Mesh | None = None) -> T.PyTree:
    """A sharding per leaf of any tree that embeds params-shaped subtrees (optax states,
    ``Region``\\ s, score trees): a leaf whose name ends with a param's HF name and whose shape
    matches gets that param's sharding; every other leaf (step counts, scalars) is replicated."""
    flat = T.flatten(shardings)
    if mesh is None:
        mesh = next(iter(flat.values())).mesh
    rep = NamedSharding(mesh, P())

    def one(name: str, leaf: Any) -> NamedSharding:
        parts = name.split(".")
        for i in range(len(parts)):
            sh = flat.get(".".join(parts[i:]))
            if sh is not None:
                s = _shape(leaf)
                return sh if s is not None and _fits(sh, s) else rep
        return rep

    return T.map_named(one, tree)


def _fits(sh: NamedSharding, shape: tuple[int, ...]) -> bool:
    if len(sh.spec) > len(shape):
        return False
    for dim, ax in zip(shape, sh.spec):
        if ax is None:
            continue
        axes = ax if isinstance(ax, tuple) else (ax,)
        if dim % int(np.prod([sh.mesh.shape[a] for a in axes])):
            return False
    return True


def shard(tree: T.PyTree, shardings: T.PyTree) -> T.PyTree:
    """Place (or reshard) ``tree`` with a matching tree of shardings."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)


def abstract_with(tree: T.PyTree, shardings: T.PyTree) -> T.PyTree:
    """``ShapeDtypeStruct`` leaves with the given shardings (orbax restore targets)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def describe(cfg: Any, mesh: Mesh, rules: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """``{hf_name: "P('tensor', 'fsdp')"}`` -- for logs and the plan command."""
    return {n: str(s) for n, s in param_specs(cfg, mesh, rules).items()}


# --- batches -------------------------------------------------------------------------------
def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_multiple(mesh: Mesh) -> int:
    """Batches must be a multiple of this many windows."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def process_rows(global_rows: int, mesh: Mesh, process_index: int | None = None) -> slice:
    """The rows of a global batch of ``global_rows`` that process ``process_index`` (default:
    this one) feeds: the union of its devices' rows under :func:`batch_sharding`."""
    if global_rows % batch_multiple(mesh):
        raise UserError(
            f"batch of {global_rows} windows does not divide over the "
            f"{batch_multiple(mesh)} batch shards of the mesh"
        )
    pi = jax.process_index() if process_index is None else process_index
    idx = batch_sharding(mesh).devices_indices_map((global_rows,))
    rows = sorted(
        {
            (i[0].start or 0, global_rows if i[0].stop is None else i[0].stop)
            for d, i in idx.items()
            if d.process_index == pi
        }
    )
    if not rows:
        return slice(0, 0)
    lo, hi = rows[0][0], max(r[1] for r in rows)
    covered = sum(b - a for a, b in rows)
    if covered != hi - lo:
        raise UserError(
            "this mesh gives a process non-contiguous batch rows; put the "
            "tensor axis within hosts (the default device order does)"
        )
    return slice(lo, hi)


def process_slice(global_batch: np.ndarray, mesh: Mesh) -> np.ndarray:
    """This process's rows of a batch every process knows in full."""
    return global_batch[process_rows(global_batch.shape[0], mesh)]


def put_batch(batch: np.ndarray, mesh: Mesh, *, process_local: bool = False) -> jax.Array:
    """Place a batch split over the batch axes.

    By default ``batch`` is the *global* batch, the same on every process (deterministic
    samplers): each process feeds only its own rows (:func:`process_rows`) to its devices.
    With ``process_local=True`` ``batch`` is already this process's rows (a per-host data
    pipeline) and the global batch is their concatenation in process order."""
    sharding = batch_sharding(mesh)
    batch = np.asarray(batch)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    if process_local:
        return jax.make_array_from_process_local_data(sharding, batch)
    rows = process_rows(batch.shape[0], mesh)
    return jax.make_array_from_process_local_data(sharding, batch[rows], batch.shape)


def put_global_batch(batch: np.ndarray, mesh: Mesh) -> jax.Array:
    """Alias of :func:`put_batch` (global batch, each process feeds its own rows)."""
    return put_batch(batch, mesh)
