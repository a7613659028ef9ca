#!/usr/bin/env bash
# The weight types side by side in one run: a float32 model and its vitmsn-convert conversions to
# bf16, f16 and int8, each timed by vitmsn-bench (seconds per image, peak RSS) in alternating rounds,
# with file sizes and each type's speed relative to float32 of the same build. The last line is JSON.
#
#   examples/bench_dtypes.sh MODEL_DIR [ROUNDS] [RUNS]      # defaults: 3 rounds of 3 runs
#
# MODEL_DIR is a float32 model folder (e.g. written by `vitmsn-synth MODEL_DIR`); the
# conversions are written next to it as MODEL_DIR-{bf16,f16,int8}.safetensors when missing.
# THREADS (default: all CPUs) sets the thread count.
set -euo pipefail
# here (the repository), py, die, positive_int, json_field, machine_line:
# shellcheck source-path=SCRIPTDIR source=bench_common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/bench_common.sh"
model="${1:?usage: bench_dtypes.sh MODEL_DIR [ROUNDS] [RUNS]}"
rounds="${2:-3}"
runs="${3:-3}"
threads="${THREADS:-$(nproc)}"
bin="${VITMSN_BIN:-$here/build/examples}"
[ -x "$bin/vitmsn-bench" ] && [ -x "$bin/vitmsn-convert" ] || die "build first ($bin/vitmsn-bench, vitmsn-convert)"
[ -f "$model/model.safetensors" ] || die "$model/model.safetensors not found"
if ! positive_int "$rounds" || ! positive_int "$runs"; then die "ROUNDS and RUNS must be positive integers"; fi
$py -c "import json" || die "$py not usable"

declare -A file=([f32]="$model/model.safetensors")
for t in bf16 f16 int8; do
  file[$t]="${model%/}-$t.safetensors"
  [ -f "${file[$t]}" ] || "$bin/vitmsn-convert" --dtype "$t" "$model" "${file[$t]}" >/dev/null
done

machine_line "$threads"
results=""
for r in $(seq 1 "$rounds"); do
  line="round $r:"
  for t in f32 bf16 f16 int8; do
    j=$("$bin/vitmsn-bench" --model "${file[$t]}" --threads "$threads" --runs "$runs" --warmup 1 --no-peak | tail -1)
    results="$results$t $j"$'\n'
    line="$line $t $(json_field "$j" seconds_per_image 3) s"
  done
  echo "$line"
done

$py - "$results" "${file[f32]}" "${file[bf16]}" "${file[f16]}" "${file[int8]}" <<'PY'
import json, os, statistics, sys
rows = {}
for line in sys.argv[1].strip().splitlines():
    t, j = line.split(" ", 1)
    rows.setdefault(t, []).append(json.loads(j))
files = dict(zip(["f32", "bf16", "f16", "int8"], sys.argv[2:6]))
med = {t: statistics.median(r["seconds_per_image"] for r in v) for t, v in rows.items()}
rss = {t: max(r["peak_rss_mb"] for r in v) for t, v in rows.items()}
print("| weights | file | peak RSS | seconds per image (median) | speed vs f32 |")
print("|---|---|---|---|---|")
out = {}
for t in ["f32", "bf16", "f16", "int8"]:
    size = os.path.getsize(files[t]) / 1e6
    print(f"| {t} | {size:.0f} MB | {rss[t]:.0f} MB ({rss[t] / rss['f32']:.2f}×) | {med[t]:.3f} | {med['f32'] / med[t]:.2f}× |")
    out[t] = {"file_mb": size, "peak_rss_mb": rss[t], "seconds_per_image": med[t], "speedup_vs_f32": med["f32"] / med[t]}
print(json.dumps(out))
PY
