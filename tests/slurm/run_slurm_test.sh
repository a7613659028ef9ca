#!/usr/bin/env bash
# End-to-end check of the Slurm launcher on THIS machine (not part of the default test run):
# installs Debian's slurm-wlm and munge if missing, starts munged, slurmctld and slurmd as a
# single-node cluster, submits examples/slurm/extract_array.sbatch as a 4-task job array over a
# folder of images with the bundled tiny model, merges with a dependent job, and checks that the
# merged features equal a single-process vitmsn-extract run bit for bit.
#
#   sudo tests/slurm/run_slurm_test.sh [BUILD_DIR]      # default BUILD_DIR: build
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
build="$(cd "${1:-$src/build}" && pwd)"
bin="$build/examples"
work="$(mktemp -d /tmp/vitmsn-slurm.XXXXXX)"
chmod 755 "$work"
[ -x "$bin/vitmsn-extract" ] || { echo "error: build first ($bin/vitmsn-extract missing)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "error: run as root (it installs and starts slurm daemons)" >&2; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
fi

host="$(hostname -s)"
cpus="$(nproc)"
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/run/slurm
chown -R slurm: /var/spool/slurmctld /var/log/slurm 2>/dev/null || true
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=vitmsn-test
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPidFile=/var/run/slurm/slurmctld.pid
SlurmdPidFile=/var/run/slurm/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmUser=root
JobCompType=jobcomp/none
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
rm -f /etc/slurm/cgroup.conf  # defaults (cgroup/v1 autodetected) work with proctrack/linuxproc

# munge: a key, then the daemon.
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge: /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
chown munge: /run/munge
pgrep -x munged >/dev/null || su -s /bin/sh munge -c "munged" || munged --force
pkill -x slurmctld 2>/dev/null || true; pkill -x slurmd 2>/dev/null || true; sleep 1
slurmctld -c -i
slurmd -c
cleanup() { pkill -x slurmd || true; pkill -x slurmctld || true; }
trap cleanup EXIT
for i in $(seq 1 30); do sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed' && break; sleep 1; done
sinfo

# 12 images, the single-process reference, then the array + the dependent merge.
mkdir -p "$work/imgs"
n=0
for f in chelsea coffee camera horse green_palette astronaut; do
  for k in a b; do cp "$src/tests/data/images/$f.png" "$work/imgs/${k}_$f.png"; n=$((n+1)); done
done
"$bin/vitmsn-extract" --model "$src/tests/data/models/tiny" --threads 1 --pool cls --output "$work/single.npy" "$work/imgs" 2>/dev/null
cd "$src"
jid=$(sbatch --parsable --array=0-3 --cpus-per-task=1 --mem=1G --output="$work/task-%a.log" \
  --export=ALL,VITMSN_BIN="$bin",MODEL="$src/tests/data/models/tiny",IMAGES="$work/imgs",OUT="$work/features.npy",CHUNK=2 \
  examples/slurm/extract_array.sbatch)
mid=$(sbatch --parsable --dependency=afterok:$jid --mem=1G --output="$work/merge.log" \
  --export=ALL,VITMSN_BIN="$bin",MERGE=1,OUT="$work/features.npy" examples/slurm/extract_array.sbatch)
echo "submitted array job $jid (4 tasks) and merge job $mid"
for i in $(seq 1 300); do
  squeue -h -j "$jid,$mid" 2>/dev/null | grep -q . || break
  sleep 1
done
cat "$work"/task-*.log "$work/merge.log" | grep -vE '^\[' || true
ls "$work"
cmp "$work/features.npy" "$work/single.npy" && cmp "$work/features.files.txt" "$work/single.files.txt"
echo "slurm job array OK: $n images in 4 shards merged == single-process result ($work)"
