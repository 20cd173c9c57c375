#!/usr/bin/env bash
# Run one jaxregion command on every host of a Cloud TPU pod slice.
#
#   scripts/launch_tpu_pod.sh TPU_NAME ZONE [--project P] -- importance --model DIR ... --mesh data=1,fsdp=-1,tensor=4
#
# Every host runs the same command; jax.distributed.initialize() discovers the slice by
# itself (no --coordinator needed). Each host must see the same paths: put the checkpoint,
# corpora and output directories on a shared filesystem or GCS-fuse mount. Only process 0
# prints tables and writes region/importance files; orbax checkpoints are written by all.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE [--project P] [--venv DIR] -- JAXREGION_ARGS..." >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; shift 2
PROJECT_ARGS=(); VENV='$HOME/jaxregion/.venv'; WORKDIR='$HOME/jaxregion'
while [[ $# -gt 0 && $1 != "--" ]]; do
  case $1 in
    --project) PROJECT_ARGS=(--project "$2"); shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --workdir) WORKDIR=$2; shift 2 ;;
    *) echo "$0: unknown option $1" >&2; exit 2 ;;
  esac
done
[[ ${1:-} == "--" ]] && shift
[[ $# -gt 0 ]] || { echo "$0: no jaxregion command given after --" >&2; exit 2; }
CMD=$(printf '%q ' "$@")
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_ARGS[@]}" --worker=all \
  --command "cd $WORKDIR && . $VENV/bin/activate && jaxregion $CMD"
