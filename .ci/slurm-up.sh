#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this machine (CI and local tests).
#
#   .ci/slurm-up.sh                      # or: eval "$(.ci/slurm-up.sh)"
#   export SLURM_CONF=/tmp/bidir-slurm/slurm.conf
#   sinfo; sbatch slurm/train_cpu.sbatch; ...
#   .ci/slurm-down.sh                    # stops what this script started
#
# Installs Debian's slurm-wlm and munge when missing, starts munged (as the munge
# user) unless a working one already runs, writes slurm.conf into the state directory
# ($BIDIR_SLURM_DIR, default /tmp/bidir-slurm), starts slurmctld and slurmd there and
# waits until the node is idle. Idempotent: running it again leaves a healthy cluster as
# it is. Progress goes to stderr; the last line on stdout is `export SLURM_CONF=...`.
# Needs root (the daemons run as root: SlurmUser=root).
set -euo pipefail

STATE=${BIDIR_SLURM_DIR:-/tmp/bidir-slurm}
CONF=$STATE/slurm.conf
WAIT_S=${BIDIR_SLURM_WAIT_S:-90}
HOST=$(hostname -s)

log() { echo "slurm-up: $*" >&2; }
die() {
    log "ERROR: $*"
    for f in "$STATE/slurmctld.log" "$STATE/slurmd.log" /var/log/munge/munged.log; do
        if [[ -f $f ]]; then
            echo "----- tail $f -----" >&2
            tail -n 25 "$f" >&2
        fi
    done
    exit 1
}
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

[[ $(id -u) -eq 0 ]] || die "run as root (the local cluster runs its daemons as root)"

# --- packages -----------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
    ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2
fi

mkdir -p "$STATE/ctld" "$STATE/d"

# --- munge --------------------------------------------------------------------------
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already works"
else
    key=/etc/munge/munge.key
    if [[ ! -s $key ]]; then
        log "creating munge key $key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
    fi
    chown -R munge:munge /etc/munge
    chmod 700 /etc/munge
    chmod 400 "$key"
    for d in /run/munge /var/lib/munge /var/log/munge; do
        mkdir -p "$d"
        chown munge:munge "$d"
    done
    chmod 755 /run/munge # clients must reach the socket
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.2
    done
    munge -n | unmunge >/dev/null 2>&1 || die "munged did not come up"
    # Remember that we started it, so that slurm-down.sh stops this one and no other.
    cp /run/munge/munged.pid "$STATE/munged.pid"
fi

# --- slurm.conf ---------------------------------------------------------------------
# The node's real hardware as slurmd sees it ("NodeName=vm CPUs=2 ... RealMemory=...").
hw=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+ //')
[[ $hw == *CPUs=* ]] || die "slurmd -C gave no hardware line: $hw"

: >"$STATE/plugstack.conf" # no SPANK plugins (ignore /etc/slurm/plugstack.conf.d)
new_conf=$(
    cat <<EOF
# Written by .ci/slurm-up.sh: a one-node cluster for bidir's CI and local tests.
ClusterName=bidir
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Requeued jobs wait cred_expire seconds before they may start again (default 120).
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$STATE/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# No slurmdbd, so no sacct: finished jobs are logged here (and kept MinJobAge s in scontrol).
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log
JobRequeue=1
ReturnToService=2
KillWait=5
MinJobAge=120
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$HOST $hw State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
)
changed=0
if [[ ! -f $CONF ]] || [[ $(cat "$CONF") != "$new_conf" ]]; then
    printf '%s\n' "$new_conf" >"$CONF"
    changed=1
    log "wrote $CONF"
fi
export SLURM_CONF=$CONF

# --- daemons ------------------------------------------------------------------------
start_daemon() { # name; (re)starts it unless ours already runs on an unchanged conf
    local name=$1 pidf=$STATE/$1.pid
    if alive "$pidf"; then
        if [[ $changed -eq 0 ]]; then
            log "$name already running (pid $(cat "$pidf"))"
            return
        fi
        log "restarting $name (config changed)"
        kill "$(cat "$pidf")"
        for _ in $(seq 50); do alive "$pidf" || break; sleep 0.2; done
    fi
    log "starting $name"
    "$name" -f "$CONF" || die "$name failed to start"
}
start_daemon slurmctld
for _ in $(seq 50); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
start_daemon slurmd

# --- wait for the node --------------------------------------------------------------
deadline=$((SECONDS + WAIT_S))
state=""
while ((SECONDS < deadline)); do
    state=$(sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | head -n 1 || true)
    case $state in
    idle | mix | alloc) break ;;
    drain | drng | down) # left over from an earlier run: bring it back
        scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
case $state in
idle | mix | alloc) ;;
*) die "node $HOST is '${state:-unknown}' after ${WAIT_S}s (want idle)" ;;
esac

log "cluster up: node $HOST is $state"
echo "export SLURM_CONF=$CONF"
