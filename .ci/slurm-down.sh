#!/usr/bin/env bash
# Stop the one-node SLURM cluster that .ci/slurm-up.sh started:
#
#   .ci/slurm-down.sh
#
# Stops slurmd, slurmctld and munged by the pids recorded in the state directory
# ($BIDIR_SLURM_DIR, default /tmp/bidir-slurm). munged is stopped only if slurm-up.sh
# started it; nothing else is touched. The state directory (logs, saved jobs) stays.
set -euo pipefail

STATE=${BIDIR_SLURM_DIR:-/tmp/bidir-slurm}

stop() { # name pidfile
    local name=$1 pidf=$2 pid
    if [[ ! -f $pidf ]]; then
        echo "slurm-down: $name: not started by slurm-up" >&2
        return
    fi
    pid=$(cat "$pidf")
    if kill -0 "$pid" 2>/dev/null; then
        echo "slurm-down: stopping $name (pid $pid)" >&2
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            kill -9 "$pid"
        fi
    else
        echo "slurm-down: $name (pid $pid) not running" >&2
    fi
    rm -f "$pidf"
}

stop slurmd "$STATE/slurmd.pid"
stop slurmctld "$STATE/slurmctld.pid"
stop munged "$STATE/munged.pid"
