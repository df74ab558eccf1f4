# shellcheck shell=bash
# Preemption handling (and the input checks below) shared by slurm/*.sbatch (sourced, not submitted):
#
#   source "$BIDIR_ROOT/slurm/_run_with_requeue.sh"
#   run_with_requeue python -m bidir.train rl_script_args.output_dir=... ; exit $?
#
# The sbatch scripts ask SLURM for `--signal=B:USR1@120 --requeue --open-mode=append`:
# 120 s before the time limit (or when an admin/test sends `scancel --signal=USR1 --batch`)
# the batch shell gets SIGUSR1. run_with_requeue then
#   1. forwards SIGUSR1 to the trainer and all its descendants (the trainer, or the
#      lamorel/torchrun launcher and its workers, which torchrun puts in sessions of their
#      own, or srun, which passes it on to its tasks),
#   2. waits until the trainer has finished its iteration, checkpointed and exited
#      (bidir.train exits with PREEMPTED_EXIT_CODE=3),
#   3. runs `scontrol requeue $SLURM_JOB_ID`. The job goes back to the queue with the same
#      id and, because output_dir does not depend on the job id, the rerun resumes from
#      the last checkpoint. A run that finished (exit 0) is not requeued.
# SIGTERM (scancel, or SLURM's own preemption, which requeues by itself) is forwarded and
# waited for, but never leads to a requeue here: a cancelled job stays cancelled.
#
# The command starts with SIGUSR1 ignored, so that only processes which install a handler
# (bidir.train's RL process) react to it; the launcher, the torchrun agent and the LLM
# servers would otherwise die of SIGUSR1's default action. A SIGUSR1 that arrives while
# Python is still importing (before the handler exists) would be lost, so after the first
# one the signal is sent again every $BIDIR_RESIGNAL_S seconds (default 20) until the
# command exits; bidir.train treats repeats as one.
#
# The warning time (@120 in --signal) must cover finishing one iteration plus a checkpoint;
# raise it (e.g. `sbatch --signal=B:USR1@600 ...`) when iterations are slow.

BIDIR_PREEMPTED_EXIT_CODE=3

# bidir_usage_error SCRIPT MESSAGE...: bad input, reported as bidir's own tools report it: one
# `SCRIPT: error: MESSAGE` line naming the problem and the fix, exit code 2, nothing run.
bidir_usage_error() {
    local script=$1
    shift
    echo "$script: error: $*" >&2
    exit 2
}

# bidir_check_python SCRIPT: $PYTHON runs and has bidir installed (importable from elsewhere than
# the working directory, as experiments/plan.py needs it); a wrong one would otherwise fail later,
# as `exec: not found` or a traceback, once per task. (plan.py checks the values it is given.)
bidir_check_python() {
    local why
    why=$("$PYTHON" -c "import sys; sys.path.pop(0); import bidir" 2>&1) || bidir_usage_error "$1" \
        "PYTHON=$PYTHON cannot import bidir ($(tail -n 1 <<<"$why")); set PYTHON to bidir's environment's python"
}

_bidir_log() { echo "[run_with_requeue $(date +%T)] $*" >&2; }

_bidir_forward() { # signal name: pass it on to the trainer and its descendants
    _bidir_interrupted=1
    if [[ $1 == USR1 ]]; then _bidir_got_usr1=1; else _bidir_got_term=1; fi
    _bidir_log "got SIG$1, forwarding to process $_bidir_child and its descendants"
    _bidir_signal_child "$1"
    if [[ $1 == USR1 && -z $_bidir_resender ]]; then
        (
            trap - USR1 TERM
            while sleep "${BIDIR_RESIGNAL_S:-20}" && kill -0 "$_bidir_child" 2>/dev/null; do
                _bidir_signal_child USR1
            done
        ) &
        _bidir_resender=$!
    fi
}

_bidir_signal_child() { # signal name: send it to the child and every descendant of it
    local pids
    # shellcheck disable=SC2207 # pids are words
    pids=($(ps -e -o pid=,ppid= | awk -v root="$_bidir_child" '
        { parent[$1] = $2 }
        END { for (p in parent) { q = p; while (q in parent && q != root && q > 1) q = parent[q]
                                  if (q == root) print p } }'))
    ((${#pids[@]})) && kill -s "$1" "${pids[@]}" 2>/dev/null
    return 0
}

# run_with_requeue CMD [ARGS...]: run CMD, handle preemption as above, return its exit code.
run_with_requeue() {
    _bidir_got_usr1=0 _bidir_got_term=0 _bidir_resender=""
    _bidir_log "job ${SLURM_JOB_ID:-none} restart ${SLURM_RESTART_COUNT:-0} on $(hostname -s): $*"
    # SIGUSR1 ignored until a process installs a handler for it.
    (
        trap '' USR1
        exec "$@"
    ) &
    _bidir_child=$!
    trap '_bidir_forward USR1' USR1
    trap '_bidir_forward TERM' TERM
    local rc
    while :; do
        _bidir_interrupted=0
        wait "$_bidir_child"
        rc=$?
        # A trapped signal makes `wait` return early (status > 128) while the child runs on.
        [[ $_bidir_interrupted == 1 ]] || break
    done
    trap - USR1 TERM
    if [[ -n $_bidir_resender ]]; then
        kill "$_bidir_resender" 2>/dev/null
        wait "$_bidir_resender" 2>/dev/null
    fi
    _bidir_log "command exited with $rc"

    if [[ $rc -ne 0 && -n ${SLURM_JOB_ID:-} ]] &&
        { [[ $_bidir_got_usr1 == 1 ]] ||
            [[ $rc -eq $BIDIR_PREEMPTED_EXIT_CODE && $_bidir_got_term == 0 ]]; }; then
        _bidir_log "preempted: requeueing job $SLURM_JOB_ID (the rerun resumes from the checkpoint)"
        scontrol requeue "$SLURM_JOB_ID" || _bidir_log "scontrol requeue failed"
    fi
    return "$rc"
}
