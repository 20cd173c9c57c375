#!/usr/bin/env bash
# One accelerator check for jaxregion, at most 8 minutes wall, on a bare machine with one
# NVIDIA GPU (written for this workplace's `nvidia-h200` kind) that holds only this repo.
#
#   bash scripts/device_check.sh            # results in $OUT (default ./device_out)
#   DEVICE_CHECK_STEPS="env importance-7b" bash scripts/device_check.sh   # only these steps
#
# Steps (each with its own timeout, skipped when the 8-minute budget is spent):
#   env          GPU, python, JAX devices; the Python packages jaxregion needs
#   parity-f32   tests/test_parity.py on the GPU, float32 matmuls at full precision
#                (JAX_DEFAULT_MATMUL_PRECISION=highest: the GPU's default would be TF32)
#   parity-bf16  every non-slow test whose name says bf16/bfloat16 in the parity, precision,
#                head and checkpoint test files (today: the bf16 load/export round trip;
#                bf16 parity tests added later are picked up by name)
#   importance-7b  taylor importance on a Llama-2-7B-shaped random model in bf16
#                (scripts/bench_importance.py --device-7b): tokens/s and MFU against the
#                datasheet dense bf16 peak (989 TFLOP/s) and against a bf16 matmul measured
#                in the same run; goal >= 40%
#   real-battery the real-model battery (configs/real_gemma3_270m.yaml, or $REAL_CONFIG) at
#                full speed, when its model and corpus are on the machine (see below)
# Each step's limit can be set: LIMIT_PARITY_F32_S, LIMIT_PARITY_BF16_S, LIMIT_IMPORTANCE_7B_S,
# LIMIT_REAL_BATTERY_S (seconds); DEVICE_CHECK_BUDGET_S bounds them all.
# Writes $OUT/device_check.json (one record per step, with the figures) and
# $OUT/device_check.log (everything printed), plus each step's own JSON/XML.
#
# What the machine has (from /work/.library/device/KINDS.md, H200.md, README.md):
#  - No network at all: pip cannot reach a registry; nothing can be downloaded there.
#  - python3 (3.12, /opt/torch/.venv) with jax/jaxlib 0.11.2 + jax-cuda13 plugin, flax, optax,
#    orbax-checkpoint, transformers, tokenizers, safetensors, ml-dtypes, pyyaml, tqdm,
#    matplotlib, pyarrow, torch (CPU reference for the parity tests), pytest, hypothesis.
#  - Not there, but imported by jaxregion: zstandard (data/sources/files.py), py3langid
#    (fidelity), gguf (GGUF import). Carry them as wheels: in the repo root run
#      echo /.whl/ >> .git/info/exclude
#      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#        --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#        --platform any -d .whl zstandard==0.25.0 py3langid==0.4.0 gguf==0.19.0 requests
#    and call the device with carry [".whl"]; this script installs .whl/*.whl with
#    --no-index into /tmp/site. Without them the steps that import them fail and say so.
#  - The repo runs from its tree (PYTHONPATH), not pip-installed: no build needed.
#  - Real models and the corpus are NOT in the repo and exceed the 64 MiB carry limit
#    (Gemma 3 270M Q4_K_M is 253 MB). The real-battery step runs only when the config's
#    model file and corpus paths exist on the machine (e.g. assembled over several warm
#    calls into an ignored folder); otherwise it is reported as "skipped" with the reason.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/device_out}"
mkdir -p "$OUT"
LOG="$OUT/device_check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
STEPS="$OUT/steps.jsonl"
: > "$STEPS"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the 7B step sizes its own memory
export OUT PY
IMPORTANCE_7B_ARGS="${IMPORTANCE_7B_ARGS:---batch 8 --seq 2048 --steps 5}"  # smoke: --layers 1
export IMPORTANCE_7B_ARGS
BUDGET_S="${DEVICE_CHECK_BUDGET_S:-470}"     # 8 minutes, less a margin for the summary
T0=$(date +%s)

elapsed() { echo $(( $(date +%s) - T0 )); }

record() {  # record NAME STATUS RC WALL [JSON-FILE-WITH-FIGURES]
  "$PY" - "$@" >> "$STEPS" <<'EOF'
import json, os, sys
name, status, rc, wall = sys.argv[1:5]
rec = {"step": name, "status": status, "rc": int(rc), "wall_s": int(wall)}
if len(sys.argv) > 5 and os.path.isfile(sys.argv[5]):
    try:
        rec["figures"] = json.load(open(sys.argv[5]))
    except ValueError:
        rec["figures"] = open(sys.argv[5]).read()[-2000:]
print(json.dumps(rec))
EOF
}

step() {  # step NAME LIMIT_S FIGURES_FILE CMD...: run CMD under a timeout, record the outcome
  local name=$1 limit=$2 figs=$3; shift 3
  local left=$(( BUDGET_S - $(elapsed) - 5 ))
  if (( limit > left )); then limit=$left; fi
  echo
  echo "=== $name (limit ${limit}s, ${left}s of the budget left) ==="
  if [[ " ${DEVICE_CHECK_STEPS:-$name} " != *" $name "* ]]; then
    echo "SKIP $name: not in DEVICE_CHECK_STEPS"
    record "$name" "not selected" 0 0
    return 0
  fi
  if (( limit < 20 )); then
    echo "SKIP $name: the 8-minute budget is spent"
    record "$name" skipped 0 0
    return 0
  fi
  local t rc=0 wall status=ok
  t=$(date +%s)
  timeout -k 10 "$limit" bash -c 'set -euo pipefail; "$@"' step "$@" || rc=$?
  wall=$(( $(date +%s) - t ))
  if (( rc == 124 || rc == 137 )); then status=timeout
  elif (( rc == 3 )); then status=skipped; rc=0  # the step said why
  elif (( rc != 0 )); then status=failed; fi
  echo "--- $name: $status (exit $rc, ${wall}s)"
  record "$name" "$status" "$rc" "$wall" "$figs"
}

# --- env -----------------------------------------------------------------------------------
env_check() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  "$PY" - "$OUT/env.json" <<'EOF'
import importlib, json, platform, sys
need = ["jax", "flax", "optax", "orbax.checkpoint", "transformers", "tokenizers", "safetensors",
        "ml_dtypes", "yaml", "tqdm", "matplotlib", "pyarrow", "zstandard", "py3langid", "gguf",
        "torch", "pytest"]
have, missing = {}, []
for m in need:
    try:
        mod = importlib.import_module(m)
        have[m] = getattr(mod, "__version__", "?")
    except Exception as e:
        missing.append(f"{m} ({type(e).__name__})")
import jax
devs = [f"{d.platform}:{d.device_kind}" for d in jax.devices()]
rec = {"python": platform.python_version(), "jax": jax.__version__, "devices": devs,
       "packages": have, "missing": missing}
json.dump(rec, open(sys.argv[1], "w"), indent=1)
print(json.dumps(rec, indent=1))
if missing:
    print("MISSING packages (carry them as wheels, see the header of this script): "
          + ", ".join(missing))
if not any(d.startswith("gpu") or d.startswith("cuda") for d in devs):
    sys.exit("no GPU visible to JAX: " + ", ".join(devs))
EOF
}
export -f record env_check
step env 90 "$OUT/env.json" env_check
# the wheels' site dir, for the later steps (env_check ran in this shell's child)
[ -d /tmp/site ] && export PYTHONPATH="$PYTHONPATH:/tmp/site"

# --- parity, f32 and bf16 ------------------------------------------------------------------
step parity-f32 "${LIMIT_PARITY_F32_S:-120}" "" env JAX_DEFAULT_MATMUL_PRECISION=highest \
  "$PY" -m pytest -q -x -p no:cacheprovider -m "not slow" tests/test_parity.py \
  --junitxml "$OUT/parity_f32.xml"

bf16_tests() {
  local files=()
  for f in tests/test_parity.py tests/test_attention.py tests/test_importance_precision.py tests/test_importance.py \
           tests/test_head.py tests/test_checkpoints.py tests/test_importance_bf16.py; do
    [ -f "$f" ] && files+=("$f")
  done
  local rc=0
  "$PY" -m pytest -q -p no:cacheprovider -m "not slow and not real" -k "bf16 or bfloat16 or fused" \
    "${files[@]}" --junitxml "$OUT/parity_bf16.xml" || rc=$?
  if (( rc == 5 )); then
    echo "SKIP: no bf16 tests on this branch (pytest collected none)"
    return 3
  fi
  return $rc
}
export -f bf16_tests
step parity-bf16 "${LIMIT_PARITY_BF16_S:-90}" "" bf16_tests

# --- importance on a Llama-2-7B-shaped model, bf16 -----------------------------------------
importance_7b() {
  # shellcheck disable=SC2086
  "$PY" scripts/bench_importance.py --device-7b $IMPORTANCE_7B_ARGS \
    --json "$OUT/importance_7b.json"
  "$PY" - "$OUT/importance_7b.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["jax"]
meas = r["matmul_peak_bf16"]
r["mfu_6N_vs_measured_matmul"] = r["achieved_flops_6N"] / meas
json.dump({"jax": r}, open(sys.argv[1], "w"), indent=1)
print(f"FIGURES 7B bf16 taylor: {r['tokens_per_s_steps_only']:,.0f} tokens/s; MFU (6N) "
      f"{100 * r['mfu_6N']:.1f}% of {r['peak_flops'] / 1e12:.0f} TFLOP/s datasheet, "
      f"{100 * r['mfu_6N_vs_measured_matmul']:.1f}% of the measured bf16 matmul "
      f"{meas / 1e12:.0f} TFLOP/s; goal >= 40%: "
      f"{'MET' if r['mfu_6N'] >= 0.4 else 'MISSED'}")
EOF
}
export -f importance_7b
step importance-7b "${LIMIT_IMPORTANCE_7B_S:-210}" "$OUT/importance_7b.json" importance_7b

# --- the real-model battery ----------------------------------------------------------------
export REAL_CONFIG="${REAL_CONFIG:-configs/real_gemma3_270m.yaml}"
real_battery() {
  if [ ! -f "$REAL_CONFIG" ]; then
    echo "SKIP: no real-model config $REAL_CONFIG on this branch (the lead wires it)"
    return 3
  fi
  local why
  why=$("$PY" - "$REAL_CONFIG" <<'EOF'
import os, sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
paths = [cfg.get("model")] + list((cfg.get("languages") or {}).values()) \
    + list((cfg.get("eval_languages") or {}).values())
gone = [p for p in paths if p and not os.path.exists(p)]
print(f"{len(gone)} inputs missing, e.g. {gone[0]}" if gone else "")
EOF
)
  if [ -n "$why" ]; then
    echo "SKIP: $REAL_CONFIG needs its model and corpus on this machine: $why"
    return 3
  fi
  local rc=0
  "$PY" -m jaxregion.cli.main experiment "$REAL_CONFIG" || rc=$?
  local out
  out=$("$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["out"])' "$REAL_CONFIG")
  for f in report.md results.json; do [ -f "$out/$f" ] && cp "$out/$f" "$OUT/battery_$f"; done
  return $rc
}
export -f real_battery
step real-battery "${LIMIT_REAL_BATTERY_S:-200}" "" real_battery

# --- summary -------------------------------------------------------------------------------
"$PY" - "$STEPS" "$OUT/device_check.json" "$(elapsed)" <<'EOF'
import json, sys
steps = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
json.dump({"steps": steps, "wall_s": int(sys.argv[3])}, open(sys.argv[2], "w"), indent=1)
print("\n| step | status | exit | wall s |\n|---|---|---|---|")
for s in steps:
    print(f"| {s['step']} | {s['status']} | {s['rc']} | {s['wall_s']} |")
print(f"total wall: {sys.argv[3]} s")
EOF
rm -f "$STEPS"
