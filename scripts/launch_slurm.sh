#!/usr/bin/env bash
# Run one jaxregion command as a multi-node SLURM job: one process per node, all local GPUs.
#
#   sbatch --nodes=4 --gpus-per-node=8 scripts/launch_slurm.sh importance --model DIR ... \
#       --mesh data=1,fsdp=-1,tensor=8
#   # or inside an allocation:  srun --ntasks-per-node=1 scripts/launch_slurm.sh eval ...
#
# The coordinator is the first node of the job; every task gets --coordinator,
# --num-processes and --process-id from SLURM's variables (jax would also auto-detect SLURM;
# being explicit makes the log show what was used). Paths must be on a shared filesystem.
#SBATCH --job-name=jaxregion
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
if [[ -z ${SLURM_JOB_ID:-} ]]; then
  echo "$0: not inside a SLURM job; submit it with sbatch (see the header)" >&2
  exit 2
fi
[[ $# -gt 0 ]] || { echo "usage: sbatch [...] $0 JAXREGION_ARGS..." >&2; exit 2; }
PORT=${JAXREGION_PORT:-29500}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
if [[ -z ${JAXREGION_IN_SRUN:-} ]]; then
  # the batch script itself (or a direct call in an allocation): one task per node
  export JAXREGION_IN_SRUN=1
  exec srun --ntasks-per-node=1 --kill-on-bad-exit=1 "$0" "$@"
fi
[[ -n ${VENV:-} ]] && . "$VENV/bin/activate"
exec jaxregion "$@" --coordinator "$HEAD:$PORT" --num-processes "$SLURM_NTASKS" \
  --process-id "$SLURM_PROCID"
