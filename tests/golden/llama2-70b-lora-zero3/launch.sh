#!/usr/bin/env bash
# Rendered by hpctune 0.1.0: starts ONE node of recipe llama2-70b-lora-zero3 on cluster
# example-h100. Slurm runs one copy per node (job.sbatch's srun, or submitit's one
# task per node); each copy runs `accelerate launch`, which starts one process per GPU.
# The node rank is read here, on each node, at run time; the head address and port come
# from the host (job.sbatch or hpctune's launcher). No Slurm command is needed here, so this
# also runs inside a container.
# The profile's set-up lines may `source` files that exist only on the cluster:
# shellcheck disable=SC1090,SC1091
set -euo pipefail

BUNDLE=@TMP@/bundle
NUM_MACHINES=1
NUM_PROCESSES=8

die() { echo "hpctune launch: error: $*" >&2; exit 1; }
say() { echo "hpctune launch: $*" >&2; }
# Every number read from the environment is checked before it is used: bash evaluates
# `x[$(cmd)]` inside $(( )) and (( )), so a non-number there would run as code.
number() { [[ "$2" =~ ^[0-9]{1,18}$ ]] || die "$1 must be a number, got '$2'"; }

# --- node rank: from Slurm on this node (never expanded once in the batch script) ----
if [[ -n "${HPCTUNE_NODE_RANK:-}" ]]; then
  NODE_RANK=$HPCTUNE_NODE_RANK
elif [[ -n "${SLURM_NODEID:-}" ]]; then
  NODE_RANK=$SLURM_NODEID
elif (( NUM_MACHINES == 1 )); then
  NODE_RANK=0
else
  die "no node rank: start this under srun or submitit (SLURM_NODEID), or set HPCTUNE_NODE_RANK"
fi
number "the node rank" "$NODE_RANK"

# --- head address and port: computed once on the host, before this script started -----
# (job.sbatch before srun; hpctune's submitit launcher before launch.sh), so this script,
# which may run inside a container, never needs Slurm's commands; one node needs neither.
if (( NUM_MACHINES == 1 )); then
  HEAD_ADDR=127.0.0.1
  [[ -z "${SLURM_JOB_ID:-}" ]] || number SLURM_JOB_ID "$SLURM_JOB_ID"
  if [[ -n "${HPCTUNE_MAIN_PORT:-}" ]]; then
    number HPCTUNE_MAIN_PORT "$HPCTUNE_MAIN_PORT"
    MAIN_PORT=$HPCTUNE_MAIN_PORT
  elif [[ -n "${SLURM_JOB_ID:-}" ]]; then
    MAIN_PORT=$(( 20000 + SLURM_JOB_ID % 10000 ))
  else
    MAIN_PORT=$(( 20000 + $$ % 10000 ))
  fi
else
  [[ -n "${HPCTUNE_HEAD_ADDR:-}" && -n "${HPCTUNE_MAIN_PORT:-}" ]] \
    || die "no head address and port: start this through job.sbatch (sbatch $BUNDLE/job.sbatch) or hpctune submit, which compute them on the host"
  HEAD_ADDR=$HPCTUNE_HEAD_ADDR
  number HPCTUNE_MAIN_PORT "$HPCTUNE_MAIN_PORT"
  MAIN_PORT=$HPCTUNE_MAIN_PORT
fi

# --- attempt: requeues + resubmissions + 1 (numbers checked, then computed) -----------
RESTARTS=${SLURM_RESTART_COUNT:-0}
RESUBMISSIONS=${HPCTUNE_RESUBMISSIONS:-0}
number SLURM_RESTART_COUNT "$RESTARTS"
number HPCTUNE_RESUBMISSIONS "$RESUBMISSIONS"
ATTEMPT=$(( RESTARTS + RESUBMISSIONS + 1 ))

# --- software ---------------------------------------------------------------------------
# Module and set-up lines are the site's own scripts (conda's activate and its activate.d
# hooks read unset variables such as PS1): they run without `set -u`.
set +u
source "$HOME/venvs/hpctune/bin/activate"
set -u

# --- network: data values, quoted; nothing below evaluates them --------------------------
export GLOO_SOCKET_IFNAME=ib0
export NCCL_DEBUG=WARN
export NCCL_IB_DISABLE=0
export NCCL_IB_HCA=mlx5
export NCCL_SOCKET_IFNAME=ib0
export OMP_NUM_THREADS=12
export TOKENIZERS_PARALLELISM=false

# --- compile caches on this node's own disk, one folder per job and node (a shared $HOME
# folder races between nodes and keeps the locks of killed builds); DeepSpeed's pre-built
# ops are copied in from HPCTUNE_EXTENSIONS_DIR by the training processes.
COMPILE_DIR=/local/scratch/"hpctune-$(id -u)-${SLURM_JOB_ID:-local$$}-$NODE_RANK"
rm -rf -- "$COMPILE_DIR"
mkdir -p -- "$COMPILE_DIR" \
  || die "cannot create $COMPILE_DIR on $(hostname): set cache.compile_dir (or node.local_scratch) in the cluster profile to a writable node-local folder"
trap 'rm -rf -- "$COMPILE_DIR"' EXIT
export TORCH_EXTENSIONS_DIR="$COMPILE_DIR/torch_extensions" TRITON_CACHE_DIR="$COMPILE_DIR/triton"

if [[ "$NODE_RANK" == 0 ]]; then
  mkdir -p "$BUNDLE/logs"
  printf '{"attempt": %d, "job_id": "%s", "node": "%s", "started": %d}\n' \
    "$ATTEMPT" "${SLURM_JOB_ID:-local}" "${SLURMD_NODENAME:-$(hostname)}" "$(date +%s)" >> "$BUNDLE/logs/attempts.jsonl"
fi
say "node rank $NODE_RANK of $NUM_MACHINES, head $HEAD_ADDR:$MAIN_PORT, $NUM_PROCESSES processes, attempt $ATTEMPT"

# The time-limit warning (USR2) is for the training processes: they checkpoint and stop
# together. accelerate (the torchrun agent) starts with USR2 ignored (kept across exec), so
# it survives the warning. Slurm signals every process of the step where its proctrack
# plugin tracks them (cgroup, linuxproc); with proctrack/pgid it signals only this process
# group, and torchrun starts the workers in sessions of their own: so this shell forwards
# USR2 to every process below it that catches USR2 (the workers; never a compiler, which
# USR2 would kill). A worker that gets it twice only sets the same flag again.
# shellcheck disable=SC2317 # called from the USR2 trap below
forward_usr2() {
  local stat pid ppid mask
  local -A kids=(["$child"]=1)
  for _ in 1 2 3 4 5 6; do # descendants, a few generations down
    for stat in /proc/[0-9]*/stat; do
      read -r pid _ _ ppid _ < "$stat" 2>/dev/null || continue
      [[ -n "${kids[$ppid]:-}" ]] && kids[$pid]=1
    done
  done
  for pid in "${!kids[@]}"; do
    mask=$(awk '/^SigCgt:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
    [[ "$mask" =~ ^[0-9a-f]{16}$ ]] || continue
    if (( (16#$mask >> 11) & 1 )); then kill -USR2 "$pid" 2>/dev/null || true; fi
  done
}
child=""
trap '[[ -n "$child" ]] && forward_usr2' USR2

status=0
(
  trap '' USR2
  exec accelerate launch \
  --config_file "$BUNDLE/accelerate_config.yaml" \
  --machine_rank "$NODE_RANK" \
  --main_process_ip "$HEAD_ADDR" \
  --main_process_port "$MAIN_PORT" \
  --num_machines "$NUM_MACHINES" \
  --num_processes "$NUM_PROCESSES" \
  --module hpctune.train "$BUNDLE/recipe.yaml"
) &
child=$!
# A TERM (scancel, the time limit) reaches accelerate from Slurm itself, which signals the
# whole step; passing it on again made the torchrun agent fail inside its own handler and
# leave its workers behind (D15). This shell only waits for accelerate to finish. Run without
# Slurm (hpctune submit -c local), nothing else signals accelerate: then it is passed on.
if [[ -n "${SLURM_JOB_ID:-}" ]]; then
  trap ':' TERM
else
  trap 'kill -TERM "$child" 2>/dev/null || true' TERM
fi
while :; do
  wait "$child" && status=0 || status=$?
  kill -0 "$child" 2>/dev/null || break
done
trap - TERM

# Stopped with a checkpoint, failed or done: the host side (job.sbatch after srun, or the
# submitit launcher) decides what comes next; nothing here calls Slurm.
exit "$status"
