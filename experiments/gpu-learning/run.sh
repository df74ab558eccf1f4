#!/usr/bin/env bash
# The learning check on one GPU: the default bidir configuration (offline setting, 40 iterations)
# and glam with their teacher on GPU 0 under lamorel_launcher (1 LLM server), seeds 1-5, and bidir
# in-process (LocalCaller) for seed 1, all at once. Compare with the CPU study
# in experiments/offline-rerun/ (same seeds, same 100 held-out episodes per mode):
#
#   bash experiments/gpu-learning/run.sh OUT_DIR [TIME_LIMIT_S=420]
#   bidir-compare "OUT_DIR/*/*/seed*"
#   python experiments/claims.py "OUT_DIR/lamorel-cuda/*/seed*"
#
# Needs bidir and Lamorel v0.3 importable, GPU 0 and 16 CPU cores (each run: 1 torch thread per
# process). Runs that outlive the limit are stopped by SIGTERM and leave their checkpoint.
# Dry run on a CPU machine (teacher on CPU, 2 iterations, 4 held-out episodes):
#   BIDIR_GPU_CHECK_DEVICE=cpu bash experiments/gpu-learning/run.sh /tmp/gpu-learning-dry 300
set -u
OUT=${1:?usage: gpu_learning.sh OUT_DIR [TIME_LIMIT_S]}
LIMIT=${2:-420}
HERE=$(cd "$(dirname "$0")/../.." && pwd)  # the repository
mkdir -p "$OUT"
: > "$OUT/exits.txt"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
if [ "${BIDIR_GPU_CHECK_DEVICE:-cuda}" = cuda ]; then
    RUN_ARGS=('lamorel_args.distributed_setup_args.llm_processes.main_llm.devices_per_process=[[0]]'
         rl_script_args.eval_episodes=100)
else  # dry run
    RUN_ARGS=(rl_script_args.iterations=2 rl_script_args.eval_episodes=4)
fi
RUN_ARGS+=(wandb.mode=disabled)

lamorel_run() {  # METHOD SEED: one run under lamorel_launcher, in its own folder (hydra writes to cwd)
    local dir="$OUT/lamorel-cuda/$1/seed$2"
    mkdir -p "$dir"
    (cd "$dir" && timeout -s TERM "$LIMIT" python -m lamorel_launcher.launch --config-path "$HERE/lamorel_configs" \
        --config-name local_cpu rl_script_args.path="$HERE/bidir/train.py" rl_script_args.method="$1" \
        rl_script_args.seed="$2" rl_script_args.output_dir="$dir" "${RUN_ARGS[@]}" > "$dir.log" 2>&1)
    echo "$1 seed $2 under Lamorel: exit $?" >> "$OUT/exits.txt"
}

{
    date -u +"%Y-%m-%d %H:%M:%S UTC"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python -c "import sys, torch, transformers; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| transformers', transformers.__version__, '| cuda', torch.cuda.is_available())"
    (cd "$HERE" && git rev-parse HEAD 2>/dev/null)
} > "$OUT/environment.txt" 2>&1

for seed in 1 2 3 4 5; do
    lamorel_run bidir "$seed" &
    lamorel_run glam "$seed" &
done
dir="$OUT/local-cuda/bidir-in-process/seed1"
mkdir -p "$dir"
(timeout -s TERM "$LIMIT" python -m bidir.train rl_script_args.seed=1 rl_script_args.output_dir="$dir" \
    "${RUN_ARGS[@]}" > "$dir.log" 2>&1; echo "bidir seed 1 in-process: exit $?" >> "$OUT/exits.txt") &
wait
cat "$OUT/exits.txt"
