#!/usr/bin/env bash
# The GPU check: the teacher benchmark (bench_teacher.py) on one CUDA GPU, under lamorel_launcher,
# within a time limit. Never part of CI.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [TIME_LIMIT_S=400]
#
# Needs bidir, Lamorel v0.3 and peft importable, and GPU 0. Runs in this order, each with what is
# left of the limit (a run that would start with under 30 s left is skipped and says so):
#   1. flan-t5-small shape, full fine-tune, Lamorel 1 server     4. qwen2-0.5b shape, LoRA, bf16, Lamorel
#   2. qwen2-0.5b shape, LoRA, Lamorel 1 server                   5. smollm-135m shape, LoRA, Lamorel
#   3. flan-t5-small shape, full fine-tune, LocalCaller
# Workload: bidir, 8 envs x 32 steps (256 frames) per iteration, 3 iterations (figures: mean of
# iterations 2-3); causal shapes score 96 (prompt, instruction) pairs per forward and the PPO
# update backpropagates 16 prompts at a time (their 150k/49k-token LM heads make full-sequence
# logits large). Writes OUT_DIR/tables.md, OUT_DIR/results.jsonl (one JSON object per run),
# OUT_DIR/environment.txt and OUT_DIR/errors.log.
#
# Dry run on a CPU machine (same sequence, tiny shapes, small workload):
#   BIDIR_GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/gpu-check-dry 600
set -u
OUT=${1:?usage: gpu_check.sh OUT_DIR [TIME_LIMIT_S]}
LIMIT=${2:-400}
DEVICE=${BIDIR_GPU_CHECK_DEVICE:-cuda}
HERE=$(cd "$(dirname "$0")" && pwd)
END=$((SECONDS + LIMIT))
mkdir -p "$OUT"
MODELS=$(mktemp -d)
trap 'rm -rf "$MODELS"' EXIT

{
    date -u +"%Y-%m-%d %H:%M:%S UTC"
    hostname
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    python -c "import sys, torch, transformers, peft; print('python', sys.version.split()[0], '| torch', torch.__version__,
'| transformers', transformers.__version__, '| peft', peft.__version__, '| cuda', torch.cuda.is_available())"
} > "$OUT/environment.txt" 2>&1

if [ "$DEVICE" = cuda ]; then
    T5=flan-t5-small; BIG=qwen2-0.5b; MID=smollm-135m
    WORK=(--n-envs 8 --steps 256 --iterations 3)
else  # dry run
    T5=tiny-t5; BIG=tiny-qwen2; MID=tiny-gpt2
    WORK=(--n-envs 2 --steps 16 --iterations 2)
fi
CAUSAL=(--override lamorel_args.llm_configs.main_llm.minibatch_size=96 rl_script_args.teacher_gradient_batch_size=16)

bench() {
    local left=$((END - SECONDS))
    if [ "$left" -lt 30 ]; then
        echo "skipped, time limit reached: $*" | tee -a "$OUT/tables.md"
        return
    fi
    echo "== $* (${left} s left)" | tee -a "$OUT/errors.log"
    timeout "$left" python "$HERE/bench_teacher.py" --device "$DEVICE" --models "$MODELS" --timeout "$left" \
        --json "$OUT/results.jsonl" "${WORK[@]}" "$@" >> "$OUT/tables.md" 2>> "$OUT/errors.log" \
        || echo "failed or timed out (exit $?): $*" | tee -a "$OUT/tables.md"
    echo >> "$OUT/tables.md"
}

bench --shape "$T5" --backends lamorel
bench --shape "$BIG" --lora --backends lamorel "${CAUSAL[@]}"
bench --shape "$T5" --backends local
bench --shape "$BIG" --lora --dtype bfloat16 --backends lamorel "${CAUSAL[@]}"
bench --shape "$MID" --lora --backends lamorel "${CAUSAL[@]}"
cat "$OUT/tables.md"
