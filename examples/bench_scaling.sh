#!/usr/bin/env bash
# Thread scaling, side by side: vitmsn-bench and ONNX Runtime (examples/peers/peer_onnxruntime.sh) on
# the same full-size synthetic ViT-L/7 at each thread count, alternating, batch 1 and batch B. Prints
# images/s and the parallel efficiency (images/s at T threads / (T × images/s at 1 thread)) per engine,
# then one JSON line.
#
#   examples/bench_scaling.sh [MODEL_DIR] [THREAD_COUNTS] [RUNS] [BATCH]
#   # defaults: build/synth-vit-msn-large-7 "1 2 4 … nproc" 3 16
#
# MODEL_DIR is written by vitmsn-synth when missing (1.2 GB). COMPUTE=bf16 adds vitmsn's bf16 compute
# (on CPUs with AVX512_BF16). PEERS="" leaves ONNX Runtime out. VITMSN_BENCH names the program.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=bench_common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/bench_common.sh"
model="${1:-$here/build/synth-vit-msn-large-7}"
n=$(nproc)
default_counts="1"
for t in 2 4 8 16 32 64 128; do [ "$t" -le "$n" ] && default_counts="$default_counts $t"; done
[ "$n" -gt 1 ] && [[ " $default_counts " != *" $n "* ]] && default_counts="$default_counts $n"
counts="${2:-$default_counts}"
runs="${3:-3}"
batch="${4:-16}"
peers="${PEERS-onnxruntime}"
bench="${VITMSN_BENCH:-$here/build/examples/vitmsn-bench}"
synth="${VITMSN_SYNTH:-$(dirname "$bench")/vitmsn-synth}"

[ -x "$bench" ] || die "$bench not built (cmake --build build)"
positive_int "$runs" || die "RUNS must be a positive integer, got '$runs'"
positive_int "$batch" || die "BATCH must be a positive integer, got '$batch'"
for t in $counts; do positive_int "$t" || die "thread counts must be positive integers, got '$t'"; done
if [ ! -f "$model/model.safetensors" ]; then
  [ -x "$synth" ] || die "$synth not built (cmake --build build)"
  echo "making the synthetic ViT-L/7 in $model (1.2 GB)"
  "$synth" --force "$model" >/dev/null
fi
machine_line "$counts"

rows=()
for t in $counts; do
  for b in 1 "$batch"; do
    o=$("$bench" --model "$model" --compute f32 --threads "$t" --batch "$b" --runs "$runs" --warmup 1 --no-peak | tail -1)
    rows+=("vitmsn-f32 $t $b $(json_field "$o" seconds_per_image)")
    echo "threads $t batch $b: vitmsn f32 $(json_field "$o" seconds_per_image 3) s/image"
    if [ "${COMPUTE:-}" = bf16 ]; then
      o=$("$bench" --model "$model" --compute bf16 --threads "$t" --batch "$b" --runs "$runs" --warmup 1 --no-peak | tail -1)
      rows+=("vitmsn-bf16 $t $b $(json_field "$o" seconds_per_image)")
      echo "threads $t batch $b: vitmsn bf16 $(json_field "$o" seconds_per_image 3) s/image"
    fi
  done
  if [[ " $peers " == *" onnxruntime "* ]]; then
    o=$(THREADS=$t bash "$here/examples/peers/peer_onnxruntime.sh" "$model" "$runs" | tail -1)
    rows+=("onnxruntime $t 1 $(json_field "$o" median_s)")
    echo "threads $t batch 1: onnxruntime $(json_field "$o" median_s 3) s/image"
  fi
done

$py - "${rows[@]}" <<'PY'
import json, sys
rows = [r.split() for r in sys.argv[1:]]
table = {}
for engine, t, b, s in rows:
    table.setdefault((engine, int(b)), {})[int(t)] = float(s)
print("images/s and parallel efficiency (vs 1 thread of the same engine and batch):")
out = []
for (engine, b), per in sorted(table.items()):
    base = per.get(1)
    cells = []
    for t, s in sorted(per.items()):
        eff = (1 / s) / (t / base) if base else None
        cells.append(f"{t}: {1 / s:.3f}/s" + (f" ({100 * eff:.0f} %)" if eff else ""))
        out.append({"engine": engine, "batch": b, "threads": t, "seconds_per_image": s,
                    "images_per_s": 1 / s, "efficiency": eff})
    print(f"  {engine:12s} batch {b:3d}  " + ", ".join(cells))
print(json.dumps(out))
PY
