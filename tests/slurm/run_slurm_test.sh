#!/usr/bin/env bash
# End-to-end check of the Slurm launcher on THIS machine (not part of the default test run):
# installs Debian's slurm-wlm and munge if missing, starts a private single-node cluster, submits
# examples/slurm/extract_array.sbatch as a 4-task job array over a folder of images with the bundled
# tiny model, merges with a dependent job (with --inputs, so an image in no shard fails the merge),
# and checks that the merged features equal a single-process vitmsn-extract run bit for bit.
#
#   sudo tests/slurm/run_slurm_test.sh [BUILD_DIR]      # default BUILD_DIR: build
#
# The cluster is private to the run, so the test can run on a machine that has a real Slurm or
# MUNGE: its own munged (a fresh key and socket), slurmctld and slurmd, configured through
# SLURM_CONF in a temporary folder that also holds their state, spool, logs and pid files; its own
# ClusterName and ports (first free pair from 26817, below the ephemeral range and away from the
# default 6817-6819). The script writes nothing under /etc (only apt-get may, when it installs),
# signals no daemon it did not start, and on every exit stops exactly the daemons it started (by the
# PIDs it holds; the same PIDs are in the folder's run/*.pid should the script itself be killed -9)
# and waits for them. On success the folder is removed; on failure the job and daemon logs are
# printed and the folder is kept.
#
# Environment:
#   VITMSN_SLURM_TEST_PORT=N      first slurmctld port to try (slurmd gets N+1), default 26817
#   VITMSN_SLURM_TEST_TIMEOUT=S   seconds allowed for the jobs, default 300
#   VITMSN_SLURM_TEST_SABOTAGE=features   self-test of the comparison: flips one byte of the
#                                 single-process reference before comparing; the run must FAIL
#   VITMSN_SLURM_TEST_SABOTAGE=missing    self-test of the merge's --inputs check: lists an image
#                                 that no shard has; the merge job and the run must FAIL
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
build="$(cd "${1:-$src/build}" && pwd)"
bin="$build/examples"
for p in vitmsn-extract vitmsn-merge; do
  [ -x "$bin/$p" ] || { echo "error: build first ($bin/$p missing)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "error: run as root (it installs slurm and runs slurmd, which needs root)" >&2; exit 1; }
port="${VITMSN_SLURM_TEST_PORT:-26817}"
timeout="${VITMSN_SLURM_TEST_TIMEOUT:-300}"
sabotage="${VITMSN_SLURM_TEST_SABOTAGE:-}"
case "$sabotage" in
  "" | features | missing) ;;
  *) echo "error: VITMSN_SLURM_TEST_SABOTAGE=$sabotage: expected features or missing" >&2; exit 2 ;;
esac

need=(munged munge unmunge slurmctld slurmd sbatch squeue sinfo scontrol scancel)
for c in "${need[@]}"; do
  if ! command -v "$c" >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
    break
  fi
done

work="$(mktemp -d /tmp/vitmsn-slurm.XXXXXX)"
# munged refuses a socket in a folder that not everyone can search.
chmod 755 "$work"
mkdir -p "$work/etc" "$work/munge" "$work/run" "$work/log" "$work/spool/slurmctld" "$work/spool/slurmd" "$work/imgs"
munged_pid="" slurmctld_pid="" slurmd_pid="" jid="" mid=""

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# True while $1 (a child of this shell) runs. A child that exited stays a zombie until `wait`, so
# kill -0 would still succeed: look at its state instead.
running() {
  case "$(ps -o stat= -p "$1" || true)" in
    "" | Z*) return 1 ;;
  esac
}

# Stops one daemon this script started and waits for it; SIGKILL only if it ignores SIGTERM for 30 s.
stop_daemon() {
  local name="$1" pid="$2" i
  [ -n "$pid" ] || return 0
  if running "$pid"; then
    kill -TERM "$pid"
    for ((i = 0; i < 150; i++)); do
      running "$pid" || break
      sleep 0.2
    done
    if running "$pid"; then
      echo "warning: $name (pid $pid) still runs 30 s after SIGTERM; sending SIGKILL" >&2
      kill -KILL "$pid"
    fi
  fi
  wait "$pid" || true  # its exit status (143 after SIGTERM) is not the test's
}

show_logs() {
  local f
  for f in "$work"/single.log "$work"/task-*.log "$work"/merge.log; do
    [ -s "$f" ] && { echo "---- $f"; cat "$f"; }
  done
  # slurmctld -D and slurmd -D repeat their log on stderr (*.out): that only matters when they died
  # before opening their log.
  for d in munged slurmctld slurmd; do
    for f in "$work/log/$d.log" "$work/log/$d.out"; do
      [ -s "$f" ] && { echo "---- $f (last 30 lines)"; tail -n 30 "$f"; break; }
    done
  done
}

# Private cluster: every job in it is ours. Cancel what is left so no slurmstepd outlives slurmd.
cancel_jobs() {
  local left i
  mapfile -t left < <(squeue -h -o %A)
  ((${#left[@]})) || return 0
  echo "cancelling jobs still queued: ${left[*]}" >&2
  scancel "${left[@]}" || true
  for ((i = 0; i < 30; i++)); do
    [ -z "$(squeue -h -o %A)" ] && return 0
    sleep 1
  done
  echo "warning: jobs still queued 30 s after scancel: $(squeue -h -o '%A %T')" >&2
}

on_exit() {
  local rc=$?
  set +e
  trap - ERR
  ((rc == 0)) || show_logs >&2
  [ -n "$slurmctld_pid" ] && running "$slurmctld_pid" && cancel_jobs
  stop_daemon slurmd "$slurmd_pid"
  stop_daemon slurmctld "$slurmctld_pid"
  stop_daemon munged "$munged_pid"  # last: slurmd and slurmctld authenticate through it until they exit
  if ((rc == 0)); then
    rm -rf "$work"
  else
    echo "slurm test FAILED (exit $rc); its files are kept in $work" >&2
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "error: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

# A listening TCP socket on port $1 (IPv4 or IPv6)? Read from /proc: ss/netstat may be missing.
port_in_use() {
  local tables=() t
  for t in /proc/net/tcp /proc/net/tcp6; do [ -r "$t" ] && tables+=("$t"); done
  awk -v p="$(printf ':%04X' "$1")" \
    'FNR > 1 && $4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' "${tables[@]}"
}
for ((tries = 0; tries < 50; tries++)); do
  port_in_use "$port" || port_in_use $((port + 1)) || break
  port=$((port + 2))
done
((tries < 50)) || fail "no free pair of ports for slurmctld/slurmd from ${VITMSN_SLURM_TEST_PORT:-26817} on"

# munge: a key of our own and a daemon on our own socket; the machine's munged is never used.
sock="$work/munge/munge.socket"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"
# --foreground so that it stays our child, which logs to stderr instead of a --log-file.
munged --foreground --key-file="$work/munge/munge.key" --socket="$sock" --pid-file="$work/run/munged.pid" \
  --seed-file="$work/munge/munged.seed" </dev/null >"$work/log/munged.log" 2>&1 &
munged_pid=$!
for ((i = 0; ; i++)); do
  munge -n --socket="$sock" 2>"$work/munge/probe.err" | unmunge --socket="$sock" >/dev/null 2>>"$work/munge/probe.err" && break
  running "$munged_pid" || fail "munged exited at start"
  ((i < 20)) || fail "munged socket $sock not answering after 10 s: $(cat "$work/munge/probe.err")"
  sleep 0.5
done

host="$(hostname -s)"
cpus="$(nproc)"
mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024))
suffix="${work##*.}"
cluster="vitmsn-test-${suffix,,}"
export SLURM_CONF="$work/etc/slurm.conf"
# Slurm reads plugstack.conf (SPANK plugins) and cgroup.conf next to slurm.conf by default: keep
# both private so the site's plugins and settings stay out of the test. The empty cgroup.conf means
# defaults, which proctrack/linuxproc + task/none never need.
: >"$work/etc/plugstack.conf"
: >"$work/etc/cgroup.conf"
# DependencyParameters=kill_invalid_depend: a merge whose array failed is cancelled rather than left
# pending forever. MinJobAge: job records outlive the wait below, for the state check after it.
cat >"$SLURM_CONF" <<CONF
ClusterName=$cluster
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
AuthInfo=socket=$sock
CredType=cred/munge
PlugStackConfig=$work/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
DependencyParameters=kill_invalid_depend
MinJobAge=3600
SlurmUser=root
MailProg=/bin/true
SlurmctldPidFile=$work/run/slurmctld.pid
SlurmdPidFile=$work/run/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmdSpoolDir=$work/spool/slurmd
StateSaveLocation=$work/spool/slurmctld
JobCompType=jobcomp/none
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=vitmsn Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
slurmctld -D -c -i </dev/null >"$work/log/slurmctld.out" 2>&1 &
slurmctld_pid=$!
slurmd -D -c </dev/null >"$work/log/slurmd.out" 2>&1 &
slurmd_pid=$!
echo "private cluster $cluster: munged $munged_pid, slurmctld $slurmctld_pid (port $port), slurmd $slurmd_pid (port $((port + 1))), in $work"
for ((i = 0; ; i++)); do
  out="$(sinfo -h -o %T 2>&1)" && grep -qE '^(idle|mixed)$' <<<"$out" && break
  running "$slurmctld_pid" || fail "slurmctld exited at start"
  running "$slurmd_pid" || fail "slurmd exited at start"
  ((i < 60)) || fail "the node is not idle 60 s after start; sinfo says: $out"
  sleep 1
done
sinfo

# 12 images, the single-process reference, then the array + the dependent merge.
n=0
for f in chelsea coffee camera horse green_palette astronaut; do
  for k in a b; do cp "$src/tests/data/images/$f.png" "$work/imgs/${k}_$f.png"; n=$((n + 1)); done
done
# The merge's --inputs list, spelled as vitmsn-extract lists images of a folder: folder, /, name.
find "$work/imgs" -type f -name '*.png' | LC_ALL=C sort >"$work/inputs.txt"
[ "$(wc -l <"$work/inputs.txt")" = "$n" ] || fail "$work/inputs.txt does not list $n images"
if [ "$sabotage" = missing ]; then
  echo "$work/imgs/never_extracted.png" >>"$work/inputs.txt"
  echo "SABOTAGE (self-test): $work/inputs.txt lists an image no shard has; the merge must fail"
fi
"$bin/vitmsn-extract" --model "$src/tests/data/models/tiny" --threads 1 --pool cls --output "$work/single.npy" \
  "$work/imgs" 2>"$work/single.log"
tail -n 1 "$work/single.log"
cd "$src"
jid=$(sbatch --parsable --array=0-3 --cpus-per-task=1 --mem=1G --output="$work/task-%a.log" \
  --export="ALL,VITMSN_BIN=$bin,MODEL=$src/tests/data/models/tiny,IMAGES=$work/imgs,OUT=$work/features.npy,CHUNK=2" \
  examples/slurm/extract_array.sbatch)
jid="${jid%%;*}"
mid=$(sbatch --parsable --dependency="afterok:$jid" --mem=1G --output="$work/merge.log" \
  --export="ALL,VITMSN_BIN=$bin,MERGE=1,OUT=$work/features.npy,INPUTS=$work/inputs.txt" \
  examples/slurm/extract_array.sbatch)
mid="${mid%%;*}"
echo "submitted array job $jid (4 tasks) and merge job $mid"
for ((i = 0; ; i++)); do
  queued="$(squeue -h -j "$jid,$mid" -o '%i %T %r')" || fail "squeue failed"
  [ -z "$queued" ] && break
  ((i < timeout)) || fail "jobs not finished after $timeout s:"$'\n'"$queued"
  sleep 1
done
states="$(for id in "$jid" "$mid"; do
  scontrol -o show job "$id" | awk '{ s = ""; for (i = 1; i <= NF; i++)
    if ($i ~ /^(JobId|ArrayTaskId|JobState|Reason|ExitCode)=/) s = s " " $i; print substr(s, 2) }'
done)"
echo "$states"
[ "$(grep -c 'JobState=COMPLETED ' <<<"$states")" = 5 ] || fail "not all 5 jobs (4 tasks + merge) COMPLETED"
# The jobs' own messages, without vitmsn-extract's per-image progress lines.
grep -vhE '^\[' "$work"/task-*.log "$work/merge.log" || [ $? = 1 ]

if [ "$sabotage" = features ]; then
  # Flip the lowest bit of the last byte: the sign/exponent byte of the last float (little-endian).
  at=$(($(stat -c %s "$work/single.npy") - 1))
  byte=$(od -An -tu1 -j "$at" -N 1 "$work/single.npy" | tr -d ' ')
  printf '%b' "\\0$(printf '%03o' $((byte ^ 1)))" | dd of="$work/single.npy" bs=1 seek="$at" conv=notrunc status=none
  echo "SABOTAGE (self-test): flipped byte $at of $work/single.npy; the comparison must fail"
fi
cmp "$work/features.npy" "$work/single.npy" ||
  fail "merged features $work/features.npy differ from the single-process run's $work/single.npy"
cmp "$work/features.files.txt" "$work/single.files.txt" ||
  fail "merged list $work/features.files.txt differs from the single-process run's $work/single.files.txt"
echo "slurm job array OK: $n images in 4 shards merged == single-process result"
