# Sourced (not run) by bench_vs_peers.sh and bench_dtypes.sh: the repository root, the python both
# use, and their shared helpers.
# shellcheck shell=bash disable=SC2034  # here and py are for the sourcing script
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py=/usr/bin/python3

die() { echo "error: $*" >&2; exit 1; }

# positive_int VALUE: true when VALUE is a positive integer (ROUNDS, RUNS).
positive_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

# json_field JSON FIELD [DIGITS]: the field of one JSON object, rounded by python's round() to DIGITS
# decimals when given.
json_field() {
  $py -c 'import json, sys
v = json.loads(sys.argv[1])[sys.argv[2]]
print(round(v, int(sys.argv[3])) if len(sys.argv) > 3 else v)' "$@"
}

# machine_line THREADS [DETAIL]: "machine: CPU model[DETAIL], N CPUs, THREADS threads; UTC date".
machine_line() {
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p')${2:-}, $(nproc) CPUs, $1 threads; $(date -u '+%F %H:%M UTC')"
}
