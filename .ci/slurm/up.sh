#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, for the workflow's SLURM test (tests/test_slurm.py, `make test-slurm`):
# controller and node on this host, one partition (pcr), munge authentication, no accounting database.
# Needs root and, unless slurm-wlm and munge are installed, apt (Debian/Ubuntu).
# Idempotent: a second call finds the daemons running and returns.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "up.sh: bringing up SLURM needs root (it installs packages, writes /etc/slurm and starts daemons):" \
        "run it in a container or VM as root, e.g. sudo make test-slurm" >&2
    exit 1
fi
if ! command -v slurmctld >/dev/null && ! command -v apt-get >/dev/null; then
    echo "up.sh: slurm-wlm is not installed and there is no apt-get to install it (Debian/Ubuntu only):" \
        "install slurm-wlm and munge, or run in a Debian container" >&2
    exit 1
fi

missing=()
command -v slurmctld >/dev/null || missing+=(slurm-wlm munge)
command -v pgrep >/dev/null || missing+=(procps)  # not in slim images
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    # a fresh container has no package lists yet: read them and try again
    apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
fi

if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged

host=$(hostname -s)
# slurmd finds its node by this name: a container's hostname may not resolve
getent hosts "$host" >/dev/null || echo "127.0.0.1 $host" >> /etc/hosts
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=pcr-ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=pcr Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
    state=$(sinfo -h -o %T 2>/dev/null || true)
    if [[ "$state" =~ ^(idle|mixed|allocated|completing)$ ]]; then  # up (busy when a run is going on)
        echo "slurm: node $host $state in partition pcr ($cpus CPUs, $mem MB)"
        exit 0
    fi
    sleep 1
done
echo "slurm did not come up; see /var/log/slurm/*.log" >&2
exit 1
