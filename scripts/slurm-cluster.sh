#!/usr/bin/env bash
# Real single-node Slurm cluster for the kernelprovider test suite.
#
#   scripts/slurm-cluster.sh start        install (if missing), configure, start, wait until usable
#   scripts/slurm-cluster.sh stop         stop slurmd and slurmctld (munged keeps running)
#   scripts/slurm-cluster.sh status       sinfo + daemon pids
#   scripts/slurm-cluster.sh restart-ctld restart slurmctld only (fault-injection tests)
#
# Runs as root on a Debian 12/13 machine without systemd: the daemons are started directly,
# with pid files and logs under $KP_SLURM_STATE. The config goes to /etc/slurm so that plain
# sbatch/srun/squeue work in any shell, for any user, without SLURM_CONF.
# Every step is idempotent: running `start` twice leaves one cluster.
#
# Knobs (environment): KP_SLURM_STATE (default /var/lib/kernelprovider-slurm),
# KP_SLURM_CPUS (CPUs advertised to Slurm, default 32 whatever the real count: lets ~20
# one-CPU jobs run at once on a 2-core box), KP_SLURM_GPUS (gres gpu count, default 4),
# KP_SLURM_START_TIMEOUT (seconds, default 60), KP_SLURM_FORCE=1 (overwrite an
# /etc/slurm/slurm.conf that this script did not write), KP_SLURM_GPU_FILES (space-separated
# real GPU device files, e.g. "/dev/nvidia0" on a GPU machine: gres.conf names them and the
# node's Gres count is theirs; unset, the GPUs are KP_SLURM_GPUS symlinks to /dev/null).
set -euo pipefail

STATE=${KP_SLURM_STATE:-/var/lib/kernelprovider-slurm}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
CPUS=${KP_SLURM_CPUS:-32}
GPU_FILES=${KP_SLURM_GPU_FILES:-}
if [ -n "$GPU_FILES" ]; then
    GPUS=$(printf '%s\n' $GPU_FILES | grep -c .)
else
    GPUS=${KP_SLURM_GPUS:-4}
fi
START_TIMEOUT=${KP_SLURM_START_TIMEOUT:-60}
MARKER="# Written by kernelprovider scripts/slurm-cluster.sh"
NODE=$(hostname -s)
CTLD_PID=$STATE/run/slurmctld.pid
SLURMD_PID=$STATE/run/slurmd.pid
LOG=$STATE/log
CONFIG_CHANGED=0

die() {
    echo "slurm-cluster: ERROR: $*" >&2
    exit 1
}
say() { echo "slurm-cluster: $*"; }

log_tail() {
    local f
    for f in "$LOG/slurmctld.log" "$LOG/slurmd.log" /var/log/munge/munged.log; do
        [ -f "$f" ] || continue
        echo "----- last lines of $f -----" >&2
        tail -n 25 "$f" >&2
    done
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages, writes /etc/slurm and starts daemons)"
}

# --- packages --------------------------------------------------------------------------------

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
    command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
    command -v munged >/dev/null 2>&1 || missing+=(munge)
    command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The packages' init scripts would try to start the daemons with no config yet; this
    # script starts them itself. A temporary policy-rc.d tells invoke-rc.d not to.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    # apt-get update only when needed: empty package lists, or the install fails on stale ones.
    if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
        apt-get update -q
    fi
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}" \
            || die "apt-get install ${missing[*]} failed"
    fi
}

# --- munge -----------------------------------------------------------------------------------

munge_works() {
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1
}

start_munge() {
    id munge >/dev/null 2>&1 || die "user 'munge' missing (the munge package creates it)"
    install -d -o munge -g munge -m 0700 /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating munge key"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    # 0755 run dir: the socket must be reachable by unprivileged users submitting jobs.
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    if munge_works; then
        return 0
    fi
    local pidf=/run/munge/munged.pid
    if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
        die "munged (pid $(cat "$pidf")) runs but credentials fail; see /var/log/munge/munged.log"
    fi
    say "starting munged"
    # --force: start even if a stale socket from a previous boot is left behind.
    runuser -u munge -- /usr/sbin/munged --force
    local i
    for i in $(seq 1 50); do
        munge_works && return 0
        sleep 0.1
    done
    tail -n 20 /var/log/munge/munged.log >&2 || true
    die "munged started but 'munge -n | unmunge' still fails"
}

# --- config ----------------------------------------------------------------------------------

slurm_at_least() { # major minor -> 0 when the installed slurmd is at least that version
    local v major minor
    v=$(/usr/sbin/slurmd -V 2>/dev/null | awk '{print $2}')
    major=${v%%.*}
    minor=${v#*.}
    minor=${minor%%.*}
    [ -n "$major" ] || return 1
    [ "$major" -gt "$1" ] || { [ "$major" -eq "$1" ] && [ "$((10#$minor))" -ge "$2" ]; }
}

write_config() {
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF" && [ "${KP_SLURM_FORCE:-0}" != 1 ]; then
        die "$CONF exists and was not written by this script; refusing to overwrite (KP_SLURM_FORCE=1 to override)"
    fi
    install -d -m 0755 "$CONF_DIR" "$STATE" "$STATE/run" "$LOG"
    install -d -m 0700 "$STATE/ctld"
    # 0755: slurmstepd runs a non-root user's batch script from here (execve as that user)
    install -d -m 0755 "$STATE/slurmd"
    # Memory advertised to Slurm: 3/4 of the real RAM (config_overrides trusts the file, so it
    # must not promise more than exists).
    local mem_mb
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 3 / 4)}' /proc/meminfo)
    local tmp
    tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
    cat >"$tmp" <<EOF
$MARKER
# Single-node test cluster: controller and compute node are this machine ($NODE).
ClusterName=kptest
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MailProg=/bin/true
MpiDefault=none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

# No cgroups: test machines (containers, micro-VMs) may have none usable.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none

SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
PriorityType=priority/basic
SchedulerType=sched/backfill
# Schedule on submit and on every job end, no batching delay.
SchedulerParameters=sched_min_interval=0,bf_interval=1,default_queue_depth=200
EnforcePartLimits=ALL
GresTypes=gpu

# Quick failure detection and quick cancel.
SlurmctldTimeout=10
SlurmdTimeout=30
MessageTimeout=5
KillWait=5
CompleteWait=0
InactiveLimit=0
MinJobAge=60
ReturnToService=2
# The CPU count below is higher than the real one on purpose; take the file's word for it.
SlurmdParameters=config_overrides

NodeName=$NODE NodeHostname=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem_mb Gres=gpu:$GPUS State=UNKNOWN
PartitionName=gpu Nodes=$NODE Default=YES MaxTime=7-00:00:00 State=UP
PartitionName=gpu-shared Nodes=$NODE MaxTime=1-00:00:00 State=UP
# Always DOWN: jobs submitted here are accepted and stay PENDING (Reason=PartitionDown).
PartitionName=held Nodes=$NODE MaxTime=1-00:00:00 State=DOWN
EOF
    if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
    else
        CONFIG_CHANGED=1
        mv -f "$tmp" "$CONF"
    fi

    # The test machine has no NVIDIA devices. Slurm (22.05 at least) drops a gres/gpu that
    # has no File= ("Removing file-less GPU"), and rejects a File= that is not a character or
    # block device; so each GPU is a symlink to /dev/null. Slurm derives CUDA_VISIBLE_DEVICES
    # from the trailing number, as it would for /dev/nvidiaN.
    local i f gres="$MARKER
AutoDetect=off"
    if [ -n "$GPU_FILES" ]; then
        # Real devices (a GPU machine): one line per file, in the order given.
        for f in $GPU_FILES; do
            [ -c "$f" ] || die "KP_SLURM_GPU_FILES: $f is not a character device"
            gres="$gres
NodeName=$NODE Name=gpu File=$f"
        done
    else
        install -d -m 0755 "$STATE/fake-gpu"
        for i in $(seq 0 $((GPUS - 1))); do
            ln -sfn /dev/null "$STATE/fake-gpu/gpu$i"
        done
        gres="$gres
NodeName=$NODE Name=gpu File=$STATE/fake-gpu/gpu[0-$((GPUS - 1))]"
    fi
    if [ "$(cat "$CONF_DIR/gres.conf" 2>/dev/null)" != "$gres" ]; then
        CONFIG_CHANGED=1
        printf '%s\n' "$gres" >"$CONF_DIR/gres.conf"
    fi
    # No cgroup use at all where Slurm can say so (CgroupPlugin=disabled: Slurm >= 24.05);
    # older ones autodetect, which is harmless with proctrack/linuxproc and task/none.
    # Older ones load the cgroup plugin anyway, and on a cgroup v2 host without a D-Bus system
    # bus (a VM or container without systemd, e.g. the GPU machine) slurmd fails to start
    # unless told to manage its cgroup itself (IgnoreSystemd, Slurm >= 22.05).
    rm -f "$CONF_DIR/cgroup.conf"
    if slurm_at_least 24 5; then
        printf '%s\nCgroupPlugin=disabled\n' "$MARKER" >"$CONF_DIR/cgroup.conf"
        chmod 0644 "$CONF_DIR/cgroup.conf"
    elif [ -e /sys/fs/cgroup/cgroup.controllers ] && [ ! -S /run/dbus/system_bus_socket ]; then
        printf '%s\nCgroupPlugin=cgroup/v2\nIgnoreSystemd=yes\nCgroupAutomount=yes\n' \
            "$MARKER" >"$CONF_DIR/cgroup.conf"
        chmod 0644 "$CONF_DIR/cgroup.conf"
    fi
    chmod 0644 "$CONF" "$CONF_DIR/gres.conf"
}

# --- daemons ---------------------------------------------------------------------------------

pid_alive() { # pidfile -> 0 when the pid in it is a live process
    [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

stop_daemon() { # name pidfile
    local name=$1 pidf=$2 pid i
    if ! pid_alive "$pidf"; then
        rm -f "$pidf"
        return 0
    fi
    pid=$(cat "$pidf")
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name did not stop in 10 s; killing"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$pidf"
}

start_ctld() {
    pid_alive "$CTLD_PID" && return 0
    say "starting slurmctld"
    /usr/sbin/slurmctld -f "$CONF" || { log_tail; die "slurmctld failed to start"; }
}

start_slurmd() {
    pid_alive "$SLURMD_PID" && return 0
    if grep -qs '^IgnoreSystemd=yes' "$CONF_DIR/cgroup.conf"; then
        # What systemd would have made: the slice slurmd puts its stepd scope in, with the
        # controllers it asks for available below the root.
        mkdir -p /sys/fs/cgroup/system.slice
        echo "+cpuset +cpu +memory" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    fi
    say "starting slurmd (node $NODE)"
    /usr/sbin/slurmd -f "$CONF" -N "$NODE" || { log_tail; die "slurmd failed to start"; }
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT)) state=""
    while [ $SECONDS -lt $deadline ]; do
        state=$(sinfo -h -n "$NODE" -p gpu -o '%T' 2>/dev/null | head -n1 || true)
        case $state in
        idle* | mixed* | allocated*) break ;;
        down* | drain* | fail*)
            # A node left DOWN by an earlier unclean stop: ReturnToService=2 handles most cases,
            # this handles the rest.
            scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
            ;;
        esac
        sleep 0.3
    done
    case $state in
    idle* | mixed* | allocated*) ;;
    *)
        log_tail
        die "node $NODE not usable after ${START_TIMEOUT}s (sinfo state: '${state:-none}')"
        ;;
    esac
    # Tests may flip partition states; a start puts them back to the documented ones.
    scontrol update partitionname=gpu state=up >/dev/null
    scontrol update partitionname=gpu-shared state=up >/dev/null
    scontrol update partitionname=held state=down >/dev/null
    if ! timeout 30 srun -N1 -n1 -t 1 --job-name=kp-cluster-check true; then
        log_tail
        die "node $NODE is $state but 'srun -N1 true' failed"
    fi
}

cmd_start() {
    need_root
    install_packages
    start_munge
    write_config
    # A running daemon keeps the config it started with; node and gres definitions are only
    # reread on a restart. Running jobs survive it (their slurmstepd lives on).
    if [ "$CONFIG_CHANGED" = 1 ]; then
        pid_alive "$SLURMD_PID" && say "config changed; restarting slurmd"
        stop_daemon slurmd "$SLURMD_PID"
        pid_alive "$CTLD_PID" && say "config changed; restarting slurmctld"
        stop_daemon slurmctld "$CTLD_PID"
    fi
    start_ctld
    start_slurmd
    wait_ready
    say "ready: node $NODE, partitions gpu (default), gpu-shared, held (DOWN); gres gpu:$GPUS"
}

cmd_stop() {
    need_root
    # Cancel the jobs first, while both daemons still run: slurmstepd outlives slurmd, so jobs
    # left running would keep going (and be re-adopted by the next start).
    if pid_alive "$CTLD_PID" && pid_alive "$SLURMD_PID"; then
        local jobs i
        jobs=$(squeue -h -o '%i' 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            say "cancelling jobs: $(echo $jobs)"
            # shellcheck disable=SC2086 # one job id per word
            scancel $jobs 2>/dev/null || true
            for i in $(seq 1 100); do
                [ -z "$(squeue -h -o '%i' -t PD,R,CG,CF,S 2>/dev/null)" ] && break
                sleep 0.1
            done
        fi
    fi
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
    say "stopped"
}

cmd_status() {
    local rc=0
    if pid_alive "$CTLD_PID"; then echo "slurmctld: running (pid $(cat "$CTLD_PID"))"; else
        echo "slurmctld: stopped"
        rc=3
    fi
    if pid_alive "$SLURMD_PID"; then echo "slurmd:    running (pid $(cat "$SLURMD_PID"))"; else
        echo "slurmd:    stopped"
        rc=3
    fi
    if munge_works; then echo "munged:    working"; else
        echo "munged:    not working"
        rc=3
    fi
    [ $rc -eq 0 ] && sinfo
    return $rc
}

cmd_restart_ctld() {
    need_root
    stop_daemon slurmctld "$CTLD_PID"
    start_ctld
    local deadline=$((SECONDS + START_TIMEOUT))
    until scontrol ping 2>/dev/null | grep -q 'is UP'; do
        [ $SECONDS -lt $deadline ] || {
            log_tail
            die "slurmctld did not answer after restart"
        }
        sleep 0.2
    done
    say "slurmctld restarted"
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
restart-ctld) cmd_restart_ctld ;;
*)
    echo "usage: $0 start|stop|status|restart-ctld" >&2
    exit 2
    ;;
esac
