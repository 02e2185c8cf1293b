#!/usr/bin/env bash
# Real Slurm test cluster for the kernelprovider test suite: one controller, N compute nodes.
#
#   scripts/slurm-cluster.sh start        install (if missing), configure, start, wait until usable
#   scripts/slurm-cluster.sh stop         cancel jobs, stop every slurmd and slurmctld, remove the
#                                         node namespaces and the bridge (munged keeps running)
#   scripts/slurm-cluster.sh status       sinfo + daemon pids
#   scripts/slurm-cluster.sh restart-ctld restart slurmctld only (fault-injection tests)
#
# Runs as root on a Debian 12/13 machine without systemd: the daemons are started directly,
# with pid files and logs under $KP_SLURM_STATE. The config goes to /etc/slurm so that plain
# sbatch/srun/squeue work in any shell, for any user, without SLURM_CONF.
# Every step is idempotent: running `start` twice leaves one cluster.
#
# Multi-node mode (KP_SLURM_NODES=N >= 2, the default N=2) makes the machine look like a
# cluster seen from a login node. slurmctld and the Jupyter server stay in the host namespace
# (the "login node"); each compute node kpnode1..N is a network namespace of its own, joined to
# the host by a veth pair on the bridge <tag>br0, with its own address ($KP_SLURM_NET.(10+i)),
# its own hostname (a UTS namespace: `hostname` in a job says kpnodeI) and its own slurmd
# (`slurmd -N kpnodeI`, own pid file, log and spool). The filesystem is shared, as a site's
# home and project filesystems are; munged's socket is a path, so it works across namespaces.
# Two more nodes exist for comparisons and failure tests:
#   kpwall1   a namespace node whose firewall (nft, in its own namespace) drops every new
#             inbound TCP connection except slurmd's and SSH's (port 22): a site firewall in front
#             of kernel ports that lets SSH through
#   <host>    a slurmd in the host namespace (NodeAddr 127.0.0.1): a kernel on the server's host
# Partitions: gpu (default), gpu-shared, held (always DOWN) on kpnode1..N; firewalled on kpwall1;
# local on the host. Only the addresses of the namespaces made here and loopback are used: the
# namespaces have no default route.
# KP_SLURM_NODES=1 is the single-node mode: one slurmd in the host namespace, node = the
# host's short name, NodeAddr 127.0.0.1, every partition on it (the GPU machine uses it with
# KP_SLURM_GPU_FILES).
#
# Knobs (environment): KP_SLURM_NODES (compute nodes, default 2; 1 = single-node mode),
# KP_SLURM_NET (first three octets of the private /24 for the namespaces, default 10.77.0),
# KP_SLURM_TAG (prefix of the bridge, veth and namespace names, default kp),
# KP_SLURM_STATE (default /var/lib/kernelprovider-slurm), KP_SLURM_CONF (default
# /etc/slurm/slurm.conf; another path makes a second cluster that the Slurm commands reach
# with SLURM_CONF), KP_SLURM_PORT (slurmctld port, default 6817; slurmd uses the next one),
# KP_SLURM_CPUS (CPUs advertised per node, default 32 whatever the real count: lets ~20
# one-CPU jobs run at once on a 2-core box), KP_SLURM_GPUS (gres gpu count, default 4),
# KP_SLURM_START_TIMEOUT (seconds, default 60), KP_SLURM_FORCE=1 (overwrite a slurm.conf that
# this script did not write), KP_SLURM_GPU_FILES (space-separated real GPU device files, e.g.
# "/dev/nvidia0" on a GPU machine: gres.conf names them and the node's Gres count is theirs;
# unset, the GPUs are KP_SLURM_GPUS symlinks to /dev/null).
set -euo pipefail

STATE=${KP_SLURM_STATE:-/var/lib/kernelprovider-slurm}
CONF=${KP_SLURM_CONF:-/etc/slurm/slurm.conf}
CONF_DIR=$(dirname "$CONF")
# Every Slurm command below talks to this cluster, also when CONF is not the default one.
export SLURM_CONF=$CONF
NODES=${KP_SLURM_NODES:-2}
NET=${KP_SLURM_NET:-10.77.0}
TAG=${KP_SLURM_TAG:-kp}
PORT=${KP_SLURM_PORT:-6817}
CPUS=${KP_SLURM_CPUS:-32}
GPU_FILES=${KP_SLURM_GPU_FILES:-}
if [ -n "$GPU_FILES" ]; then
    GPUS=$(printf '%s\n' $GPU_FILES | grep -c .)
else
    GPUS=${KP_SLURM_GPUS:-4}
fi
START_TIMEOUT=${KP_SLURM_START_TIMEOUT:-60}
MARKER="# Written by kernelprovider scripts/slurm-cluster.sh"
HOST=$(hostname -s)
CTLD_PID=$STATE/run/slurmctld.pid
LOG=$STATE/log
BRIDGE=${TAG}br0
WALL=kpwall1
CONFIG_CHANGED=0

die() {
    echo "slurm-cluster: ERROR: $*" >&2
    exit 1
}
say() { echo "slurm-cluster: $*"; }

[[ $NODES =~ ^[1-9][0-9]?$ ]] && [ "$NODES" -le 80 ] || die "KP_SLURM_NODES=$NODES: give 1..80"
# Private ranges only: the harness sends traffic to nothing but its own namespaces.
[[ $NET =~ ^(10\.[0-9]{1,3}|172\.(1[6-9]|2[0-9]|3[01])|192\.168)\.[0-9]{1,3}$ ]] \
    || die "KP_SLURM_NET=$NET: give the first three octets of a private /24, e.g. 10.77.0"
[[ $TAG =~ ^[a-z][a-z0-9]{0,5}$ ]] || die "KP_SLURM_TAG=$TAG: 1-6 lowercase letters or digits"

multi() { [ "$NODES" -ge 2 ]; }

# Node lists. COMPUTE: the nodes of gpu/gpu-shared/held. NS_NODES: nodes with a namespace.
if multi; then
    COMPUTE=()
    for i in $(seq 1 "$NODES"); do COMPUTE+=("kpnode$i"); done
    NS_NODES=("${COMPUTE[@]}" "$WALL")
    ALL_NODES=("${NS_NODES[@]}" "$HOST")
    CTLD_ADDR=$NET.1
else
    COMPUTE=("$HOST")
    NS_NODES=()
    ALL_NODES=("$HOST")
    CTLD_ADDR=127.0.0.1
fi

node_addr() { # node -> its NodeAddr
    case $1 in
    kpnode*) echo "$NET.$((10 + ${1#kpnode}))" ;;
    "$WALL") echo "$NET.100" ;;
    *) echo 127.0.0.1 ;;
    esac
}
netns_of() { echo "$TAG-$1"; }
veth_of() { # node -> host-side veth name (<= 15 characters)
    case $1 in
    kpnode*) echo "${TAG}v${1#kpnode}" ;;
    *) echo "${TAG}w${1#kpwall}" ;;
    esac
}
partition_of() { # node -> a partition that holds it
    case $1 in
    kpnode*) echo gpu ;;
    "$WALL") echo firewalled ;;
    *) if multi; then echo local; else echo gpu; fi ;;
    esac
}
slurmd_pid() { echo "$STATE/run/slurmd-$1.pid"; }

log_tail() {
    local f
    for f in "$LOG/slurmctld.log" "$LOG"/slurmd-*.log /var/log/munge/munged.log; do
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
    if multi; then
        command -v ip >/dev/null 2>&1 || missing+=(iproute2)
        command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
        command -v nft >/dev/null 2>&1 || missing+=(nftables)
        # The tests' SSH tunnel (a real sshd in kpwall1's namespace, started by the tests
        # with their own keys) and packet capture on the nodes' veths.
        [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
        command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
        command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
    fi
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

nodes_expr() { # node... -> comma list for slurm.conf
    local IFS=,
    echo "$*"
}

write_config() {
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF" && [ "${KP_SLURM_FORCE:-0}" != 1 ]; then
        die "$CONF exists and was not written by this script; refusing to overwrite (KP_SLURM_FORCE=1 to override)"
    fi
    install -d -m 0755 "$CONF_DIR" "$STATE" "$STATE/run" "$LOG"
    install -d -m 0700 "$STATE/ctld"
    # 0755: slurmstepd runs a non-root user's batch script from here (execve as that user)
    local node
    install -d -m 0755 "$STATE/slurmd"
    for node in "${ALL_NODES[@]}"; do install -d -m 0755 "$STATE/slurmd/$node"; done
    # Memory advertised to Slurm per node: 3/4 of the real RAM (config_overrides trusts the
    # file, so it must not promise more than exists on the machine; the nodes share it).
    local mem_mb
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 3 / 4)}' /proc/meminfo)
    local compute wall_lines="" what
    compute=$(nodes_expr "${COMPUTE[@]}")
    if multi; then
        what="Multi-node test cluster: controller on this machine ($HOST, the login node, at $CTLD_ADDR);
# compute nodes ${compute} in network namespaces ($NET.0/24)."
    else
        what="Single-node test cluster: controller and compute node are this machine ($HOST)."
    fi
    local tmp
    tmp=$(mktemp "$CONF_DIR/.slurm.conf.XXXXXX")
    {
        cat <<EOF
$MARKER
# $what
ClusterName=kptest
SlurmctldHost=$HOST($CTLD_ADDR)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MailProg=/bin/true
MpiDefault=none
StateSaveLocation=$STATE/ctld
# One slurmd per node on this machine: %n is the node's name.
SlurmdSpoolDir=$STATE/slurmd/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
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

EOF
        for node in "${ALL_NODES[@]}"; do
            echo "NodeName=$node NodeHostname=$node NodeAddr=$(node_addr "$node") CPUs=$CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$CPUS ThreadsPerCore=1 RealMemory=$mem_mb Gres=gpu:$GPUS State=UNKNOWN"
        done
        # LLN: each job goes to the least loaded node, so kernels spread over the nodes.
        cat <<EOF
PartitionName=gpu Nodes=$compute Default=YES MaxTime=7-00:00:00 LLN=YES State=UP
PartitionName=gpu-shared Nodes=$compute MaxTime=1-00:00:00 LLN=YES State=UP
# Always DOWN: jobs submitted here are accepted and stay PENDING (Reason=PartitionDown).
PartitionName=held Nodes=$compute MaxTime=1-00:00:00 State=DOWN
EOF
        if multi; then
            cat <<EOF
# The server's own host: a kernel there is the same-host baseline of bench/bench_slurm.py.
PartitionName=local Nodes=$HOST MaxTime=1-00:00:00 State=UP
# A node whose firewall drops inbound connections to the kernel's ports.
PartitionName=firewalled Nodes=$WALL MaxTime=1-00:00:00 State=UP
EOF
        fi
    } >"$tmp"
    if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
    else
        CONFIG_CHANGED=1
        mv -f "$tmp" "$CONF"
    fi

    # The test machine has no NVIDIA devices. Slurm (22.05 at least) drops a gres/gpu that
    # has no File= ("Removing file-less GPU"), and rejects a File= that is not a character or
    # block device; so each GPU is a symlink to /dev/null. Slurm derives CUDA_VISIBLE_DEVICES
    # from the trailing number, as it would for /dev/nvidiaN. Every node names the same files.
    local i f all gres="$MARKER
AutoDetect=off"
    all=$(nodes_expr "${ALL_NODES[@]}")
    if [ -n "$GPU_FILES" ]; then
        # Real devices (a GPU machine): one line per file, in the order given.
        for f in $GPU_FILES; do
            [ -c "$f" ] || die "KP_SLURM_GPU_FILES: $f is not a character device"
            gres="$gres
NodeName=$all Name=gpu File=$f"
        done
    else
        install -d -m 0755 "$STATE/fake-gpu"
        for i in $(seq 0 $((GPUS - 1))); do
            ln -sfn /dev/null "$STATE/fake-gpu/gpu$i"
        done
        gres="$gres
NodeName=$all Name=gpu File=$STATE/fake-gpu/gpu[0-$((GPUS - 1))]"
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

# --- node namespaces -------------------------------------------------------------------------

net_up() { # bridge on the host, one namespace + veth per node, the firewall of kpwall1
    if ! ip link show "$BRIDGE" >/dev/null 2>&1 && ! ip link add "$BRIDGE" type bridge; then
        die "cannot create the bridge $BRIDGE for the node namespaces (no CAP_NET_ADMIN here?); KP_SLURM_NODES=1 starts the single-node cluster instead"
    fi
    # IPv4 only: no IPv6 link-local chatter from the interfaces made here.
    sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1" 2>/dev/null || true
    ip addr replace "$NET.1/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local node ns veth
    for node in "${NS_NODES[@]}"; do
        ns=$(netns_of "$node")
        veth=$(veth_of "$node")
        [ -e "/run/netns/$ns" ] || ip netns add "$ns" \
            || die "cannot create the network namespace $ns for node $node; KP_SLURM_NODES=1 starts the single-node cluster instead"
        if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
            ip link del "$veth" 2>/dev/null || true
            ip link add "$veth" type veth peer name eth0 netns "$ns"
        fi
        sysctl -qw "net.ipv6.conf.$veth.disable_ipv6=1" 2>/dev/null || true
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null || true
        ip link set "$veth" master "$BRIDGE" up
        ip -n "$ns" link set lo up
        ip -n "$ns" addr replace "$(node_addr "$node")/24" dev eth0
        ip -n "$ns" link set eth0 up
    done
    # kpwall1: a site firewall. slurmd's port, SSH (port 22: the tunnel tests run an sshd
    # there) and replies to the node's own connections pass; every other new inbound TCP
    # connection (the kernel's ports) is dropped without answer.
    ip netns exec "$(netns_of "$WALL")" nft -f - <<EOF
table inet kpwall
delete table inet kpwall
table inet kpwall {
    chain input {
        type filter hook input priority 0; policy accept;
        iif "lo" accept
        ct state established,related accept
        tcp dport $((PORT + 1)) accept
        tcp dport 22 accept
        meta l4proto tcp ct state new drop
    }
}
EOF
}

our_namespaces() { # namespaces this script made, except those of the nodes given
    local ns keep
    for ns in /run/netns/"$TAG"-kpnode* /run/netns/"$TAG"-kpwall*; do
        [ -e "$ns" ] || continue
        for keep in "$@"; do [ "${ns##*/}" = "$(netns_of "$keep")" ] && continue 2; done
        echo "$ns"
    done
}

net_down() { # remove the namespaces (all, or all but those of the nodes given), their veths
    local ns node
    for ns in $(our_namespaces "$@"); do
        node=${ns##*/"$TAG"-}
        # Deleting a veth removes both ends at once; a namespace's own devices only go when
        # the kernel gets round to destroying it.
        ip link del "$(veth_of "$node")" 2>/dev/null || true
        ip netns del "${ns##*/}" 2>/dev/null || true
    done
    if [ $# -eq 0 ] && ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
    return 0
}

kill_netns_leftovers() { # processes left in our namespaces (all, or all but those of the nodes given)
    local ns pids i
    for ns in $(our_namespaces "$@"); do
        pids=$(ip netns pids "${ns##*/}" 2>/dev/null || true)
        [ -n "$pids" ] || continue
        say "ending processes left in ${ns##*/}: $(echo $pids)"
        # shellcheck disable=SC2086 # one pid per word
        kill -TERM $pids 2>/dev/null || true
        for i in $(seq 1 50); do
            [ -z "$(ip netns pids "${ns##*/}" 2>/dev/null)" ] && break
            sleep 0.1
        done
        pids=$(ip netns pids "${ns##*/}" 2>/dev/null || true)
        # shellcheck disable=SC2086
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    done
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

stop_slurmds() { # every slurmd this script started, in any mode (slurmd.pid: older versions)
    local pidf
    # In parallel: each slurmd takes ~2 s to shut down.
    for pidf in "$STATE"/run/slurmd-*.pid "$STATE/run/slurmd.pid"; do
        [ -e "$pidf" ] || continue
        stop_daemon "$(basename "$pidf" .pid)" "$pidf" &
    done
    wait
}

start_ctld() {
    pid_alive "$CTLD_PID" && return 0
    say "starting slurmctld"
    /usr/sbin/slurmctld -f "$CONF" || { log_tail; die "slurmctld failed to start"; }
}

start_slurmd() { # node
    local node=$1
    pid_alive "$(slurmd_pid "$node")" && return 0
    if grep -qs '^IgnoreSystemd=yes' "$CONF_DIR/cgroup.conf"; then
        # What systemd would have made: the slice slurmd puts its stepd scope in, with the
        # controllers it asks for available below the root.
        mkdir -p /sys/fs/cgroup/system.slice
        echo "+cpuset +cpu +memory" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    fi
    if [ "$node" = "$HOST" ]; then
        say "starting slurmd (node $node, host namespace)"
        /usr/sbin/slurmd -f "$CONF" -N "$node" || { log_tail; die "slurmd $node failed to start"; }
        return 0
    fi
    say "starting slurmd (node $node, namespace $(netns_of "$node"), $(node_addr "$node"))"
    # nsenter --net only: the node keeps the host's mounts (shared filesystem, munge socket);
    # unshare --uts gives it its own hostname, which the daemon and every job step inherit.
    nsenter --net="/run/netns/$(netns_of "$node")" -- unshare --uts -- /bin/sh -c \
        'hostname "$1" && exec /usr/sbin/slurmd -f "$2" -N "$1"' sh "$node" "$CONF" \
        || { log_tail; die "slurmd $node failed to start"; }
}

node_state() { # node -> its sinfo state ('' when unknown)
    sinfo -h -n "$1" -o '%T' 2>/dev/null | head -n1 || true
}

wait_ready() {
    local deadline=$((SECONDS + START_TIMEOUT)) node state pending
    while :; do
        pending=""
        for node in "${ALL_NODES[@]}"; do
            state=$(node_state "$node")
            case $state in
            idle* | mixed* | allocated*) ;;
            down* | drain* | fail*)
                # A node left DOWN by an earlier unclean stop: ReturnToService=2 handles most
                # cases, this handles the rest.
                scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
                pending="$pending $node=$state"
                ;;
            *) pending="$pending $node=${state:-none}" ;;
            esac
        done
        [ -z "$pending" ] && break
        if [ $SECONDS -ge $deadline ]; then
            log_tail
            die "nodes not usable after ${START_TIMEOUT}s (sinfo states:$pending)"
        fi
        sleep 0.3
    done
    # Tests may flip partition states; a start puts them back to the documented ones.
    scontrol update partitionname=gpu state=up >/dev/null
    scontrol update partitionname=gpu-shared state=up >/dev/null
    scontrol update partitionname=held state=down >/dev/null
    if multi; then
        scontrol update partitionname=local state=up >/dev/null
        scontrol update partitionname=firewalled state=up >/dev/null
    fi
    # One real job step on every node, each checking the hostname it runs under.
    for node in "${ALL_NODES[@]}"; do
        state=$(timeout 30 srun -p "$(partition_of "$node")" -w "$node" -N1 -n1 -t 1 --job-name=kp-cluster-check hostname 2>&1) \
            || { log_tail; die "node $node is up but 'srun -w $node hostname' failed: $state"; }
        [ "$state" = "$node" ] || die "a step on node $node says its hostname is '$state'"
    done
}

cmd_start() {
    need_root
    install_packages
    start_munge
    write_config
    # A running daemon keeps the config it started with; node and gres definitions are only
    # reread on a restart. Running jobs survive it (their slurmstepd lives on).
    if [ "$CONFIG_CHANGED" = 1 ]; then
        say "config changed; restarting the daemons"
        stop_slurmds
        stop_daemon slurmctld "$CTLD_PID"
    fi
    if multi; then
        # Nodes of an earlier start with a larger KP_SLURM_NODES go.
        kill_netns_leftovers "${NS_NODES[@]}"
        net_down "${NS_NODES[@]}"
        net_up
    else
        # Namespaces of an earlier multi-node start go; their slurmds were stopped above.
        kill_netns_leftovers
        net_down
    fi
    start_ctld
    local node
    for node in "${ALL_NODES[@]}"; do start_slurmd "$node"; done
    wait_ready
    if multi; then
        say "ready: nodes $(nodes_expr "${COMPUTE[@]}") ($NET.11..) in namespaces, $WALL (firewalled) and $HOST (local); partitions gpu (default), gpu-shared, held (DOWN), local, firewalled; gres gpu:$GPUS per node"
    else
        say "ready: node $HOST, partitions gpu (default), gpu-shared, held (DOWN); gres gpu:$GPUS"
    fi
}

cmd_stop() {
    need_root
    # Cancel the jobs first, while the daemons still run: slurmstepd outlives slurmd, so jobs
    # left running would keep going (and be re-adopted by the next start).
    if pid_alive "$CTLD_PID"; then
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
    stop_slurmds
    stop_daemon slurmctld "$CTLD_PID"
    kill_netns_leftovers
    net_down
    say "stopped"
}

cmd_status() {
    local rc=0 node pidf where
    if pid_alive "$CTLD_PID"; then echo "slurmctld: running (pid $(cat "$CTLD_PID"))"; else
        echo "slurmctld: stopped"
        rc=3
    fi
    for node in "${ALL_NODES[@]}"; do
        pidf=$(slurmd_pid "$node")
        where="host namespace"
        [ "$node" = "$HOST" ] || where="namespace $(netns_of "$node"), $(node_addr "$node")"
        if pid_alive "$pidf"; then echo "slurmd $node: running (pid $(cat "$pidf"), $where)"; else
            echo "slurmd $node: stopped ($where)"
            rc=3
        fi
    done
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
