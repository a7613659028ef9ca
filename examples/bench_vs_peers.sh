#!/usr/bin/env bash
# Side-by-side benchmark in one run: vitmsn-bench, ONNX Runtime (examples/peers/peer_onnxruntime.sh:
# MLAS kernels, graph optimisations on) and PyTorch eager (examples/peers/peer_torch.py, Debian
# python3-torch) on the same full-size synthetic ViT-L/7, same threads,
# alternating in rounds so that each engine sees the same machine state. Each round runs every
# engine for RUNS timed forwards (after a warm-up) and takes its median; the summary is the median
# over the rounds, the ratios against vitmsn, and vitmsn's share of the FMA peak measured in the same
# rounds. On CPUs where bf16 compute pays (vitmsn-bench --compute auto picks it for bf16 weights) a
# second vitmsn column runs the same float32 file with --compute bf16. FORMS="int8 panels" (the
# default) adds the model's int8 conversion and its float32 panel file (`vitmsn-convert --dtype int8`,
# `--layout panels`, written next to MODEL_DIR as MODEL_DIR-int8.safetensors and
# MODEL_DIR-panels.safetensors when missing); FORMS="" leaves them out. Besides the medians, the
# summary gives each ratio per round, the float32 file's warm load and every form's peak RSS. The
# last line is JSON.
#
#   examples/bench_vs_peers.sh [MODEL_DIR] [ROUNDS] [RUNS]      # defaults: build/synth-vit-msn-large-7 3 3
#
# MODEL_DIR is written by vitmsn-synth when missing (1.2 GB). THREADS (default: all CPUs) sets every
# engine's thread count; PEERS="onnxruntime pytorch" chooses the peers. VITMSN_BENCH, VITMSN_SYNTH
# and VITMSN_CONVERT name the programs (default: build/examples/).
set -euo pipefail
# here (the repository), py, die, positive_int, json_field, machine_line:
# shellcheck source-path=SCRIPTDIR source=bench_common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/bench_common.sh"
peers_dir="$here/examples/peers"
model="${1:-$here/build/synth-vit-msn-large-7}"
rounds="${2:-3}"
runs="${3:-3}"
threads="${THREADS:-$(nproc)}"
peers="${PEERS:-onnxruntime pytorch}"
bench="${VITMSN_BENCH:-$here/build/examples/vitmsn-bench}"
synth="${VITMSN_SYNTH:-$(dirname "$bench")/vitmsn-synth}"
convert="${VITMSN_CONVERT:-$(dirname "$bench")/vitmsn-convert}"
forms="${FORMS-int8 panels}"

[ -x "$bench" ] || die "$bench not built (cmake --build build)"
positive_int "$rounds" || die "ROUNDS must be a positive integer, got '$rounds'"
positive_int "$runs" || die "RUNS must be a positive integer, got '$runs'"
$py -c "import numpy" 2>/dev/null || die "$py lacks numpy: apt-get install python3-numpy"
for p in $peers; do
  case "$p" in
    pytorch)
      $py -c "import torch" 2>/dev/null || die "$py lacks torch: apt-get install python3-torch"
      # Debian's torch calls the system BLAS: without OpenBLAS it gets the reference BLAS (~20x slower).
      blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)
      [[ "$blas" == *openblas* ]] ||
        die "PyTorch would use the reference BLAS ($blas): apt-get install libopenblas0-pthread" ;;
    onnxruntime) command -v node >/dev/null && command -v npm >/dev/null || die "ONNX Runtime needs node and npm" ;;
    *) die "unknown peer '$p' (onnxruntime, pytorch)" ;;
  esac
done
# Each form: the vitmsn-convert option that makes it from the float32 model.
declare -A form_option=([int8]="--dtype int8" [panels]="--layout panels") form_file=()
for f in $forms; do
  [ -n "${form_option[$f]:-}" ] || die "unknown form '$f' in FORMS (int8, panels)"
  form_file[$f]="${model%/}-$f.safetensors"
  [ -f "${form_file[$f]}" ] || [ -x "$convert" ] || die "$convert not built (cmake --build build)"
done
if [ ! -f "$model/model.safetensors" ]; then
  [ -x "$synth" ] || die "$synth not built (cmake --build build)"
  echo "making the synthetic ViT-L/7 in $model (1.2 GB)"
  "$synth" --force "$model" >/dev/null
fi
for f in $forms; do
  if [ ! -f "${form_file[$f]}" ]; then
    echo "converting $model to ${form_file[$f]} (${form_option[$f]})"
    # shellcheck disable=SC2086  # the option and its value are two words
    "$convert" ${form_option[$f]} "$model" "${form_file[$f]}" >/dev/null
  fi
done

flags="$(grep -m1 '^flags' /proc/cpuinfo)"
isa="AVX2"
[[ "$flags" == *avx512f* ]] && isa="AVX-512"
[[ "$flags" == *avx512_bf16* ]] && isa="$isa+BF16"
[[ "$flags" == *avx512_vnni* ]] && isa="$isa+VNNI"
machine_line "$threads" " ($isa)"

ours=() peaks=() ort=() torch=() attn_frac=() outside=() bf16=() loads=() rss=() forms_json=""

last=""
for r in $(seq 1 "$rounds"); do
  line="round $r:"
  o=$("$bench" --model "$model" --threads "$threads" --runs "$runs" --warmup 1 | tail -1)
  last="$o"
  # bf16 compute where it pays: vitmsn's own measured answer (bf16_compute_pays in its JSON).
  bf16_pays=$(json_field "$o" bf16_compute_pays)
  ours+=("$(json_field "$o" seconds_per_image)")
  peaks+=("$(json_field "$o" fma_peak_gflops)")
  attn_frac+=("$(json_field "$o" attention_peak_fraction)")
  outside+=("$(json_field "$o" outside_gemm_fraction)")
  loads+=("$(json_field "$o" load_seconds)")
  rss+=("$(json_field "$o" peak_rss_mb)")
  line="$line vitmsn ${ours[-1]} s"
  if [ "$bf16_pays" = True ]; then
    b=$("$bench" --model "$model" --compute bf16 --threads "$threads" --runs "$runs" --warmup 1 --no-peak | tail -1)
    bf16+=("$(json_field "$b" seconds_per_image)")
    line="$line, vitmsn bf16 compute ${bf16[-1]} s"
  fi
  for f in $forms; do
    j=$("$bench" --model "${form_file[$f]}" --threads "$threads" --runs "$runs" --warmup 1 --no-peak | tail -1)
    forms_json="$forms_json$r $f $j"$'\n'
    line="$line, vitmsn $f $(json_field "$j" seconds_per_image) s"
  done
  for p in $peers; do
    if [ "$p" = onnxruntime ]; then
      t=$(THREADS=$threads bash "$peers_dir/peer_onnxruntime.sh" "$model" "$runs" | tail -1)
      ort+=("$(json_field "$t" median_s)")
      line="$line, onnxruntime ${ort[-1]} s"
    else
      t=$(THREADS=$threads $py "$peers_dir/peer_torch.py" "$model/model.safetensors" "$runs" | tail -1)
      torch+=("$(json_field "$t" median_s)")
      line="$line, pytorch ${torch[-1]} s"
    fi
  done
  echo "$line"
done

$py - "${ours[*]}" "${peaks[*]}" "${ort[*]:-}" "${torch[*]:-}" "${attn_frac[*]}" "${outside[*]}" "$last" \
  "${bf16[*]:-}" "${loads[*]}" "${rss[*]}" "$forms_json" "$(stat -c %s "$model/model.safetensors")" <<'PY'
import json, statistics, sys
num = lambda s: [float(x) for x in s.split()]
ours, peaks, ort, torch = num(sys.argv[1]), num(sys.argv[2]), num(sys.argv[3]), num(sys.argv[4])
attn_frac, outside = num(sys.argv[5]), num(sys.argv[6])
last = json.loads(sys.argv[7])
bf16 = num(sys.argv[8])
loads, rss = num(sys.argv[9]), num(sys.argv[10])
forms = {}
for line in sys.argv[11].strip().splitlines():
    _, name, j = line.split(" ", 2)
    forms.setdefault(name, []).append(json.loads(j))
file_mb = int(sys.argv[12]) / 1e6
per_round = lambda a, b: " / ".join(f"{x / y:.2f}" for x, y in zip(a, b))
mo, peak = statistics.median(ours), statistics.median(peaks)
gflop = last["gflop_per_image"]
print(f"median over {len(ours)} rounds (seconds per image, {last['threads']} threads, batch 1, 224x224):")
print(f"  vitmsn       {mo:.3f} s  {gflop / mo:6.1f} GFLOP/s  {100 * gflop / mo / peak:5.1f} % of the {peak:.0f} GFLOP/s FMA peak")
out = {"vitmsn_seconds": mo, "fma_peak_gflops": peak, "peak_fraction": gflop / mo / peak,
       "attention_peak_fraction": statistics.median(attn_frac),
       "outside_gemm_fraction": statistics.median(outside)}
print(f"               peak share per round {' / '.join(f'{100 * gflop / o / p:.1f}' for o, p in zip(ours, peaks))} %; "
      f"load {' / '.join(f'{x:.3f}' for x in loads)} s; peak RSS {max(rss):.0f} MB (file {file_mb:.0f} MB "
      f"+ {max(rss) - file_mb:.0f})")
out["load_seconds"] = loads
out["peak_rss_mb"] = max(rss)
if bf16:
    mb = statistics.median(bf16)
    print(f"  vitmsn bf16  {mb:.3f} s  {gflop / mb:6.1f} GFLOP/s  (--compute bf16 on the float32 file: "
          f"{mo / mb:.2f}x vitmsn float32; per round {per_round(ours, bf16)})")
    out["vitmsn_bf16_seconds"] = mb
    out["bf16_speedup"] = mo / mb
for name, rows in forms.items():
    t = [r["seconds_per_image"] for r in rows]
    m, peak_rss = statistics.median(t), max(r["peak_rss_mb"] for r in rows)
    what = "int8 file" if name == "int8" else "float32 panel file"
    form_loads = " / ".join("%.3f" % r["load_seconds"] for r in rows)
    print(f"  vitmsn {name:7s}{m:.3f} s  ({what}: {mo / m:.2f}x vitmsn float32, per round {per_round(ours, t)}; "
          f"load {form_loads} s; peak RSS {peak_rss:.0f} MB = {peak_rss / max(rss):.2f}x float32's)")
    out[f"vitmsn_{name}_seconds"] = m
    out[f"{name}_speedup"] = mo / m
    out[f"{name}_peak_rss_mb"] = peak_rss
    out[f"{name}_load_seconds"] = [r["load_seconds"] for r in rows]
for name, v in (("onnxruntime", ort), ("pytorch", torch)):
    if v:
        m = statistics.median(v)
        print(f"  {name:12s} {m:.3f} s  {gflop / m:6.1f} GFLOP/s  {100 * gflop / m / peak:5.1f} % of peak;  vitmsn is {m / mo:.2f}x its speed"
              + (f", vitmsn bf16 {m / statistics.median(bf16):.2f}x" if bf16 else "")
              + f" (per round {per_round(v, ours)})")
        out[name + "_seconds"] = m
        out["speedup_vs_" + name] = m / mo
        if bf16:
            out["bf16_speedup_vs_" + name] = m / statistics.median(bf16)
print(f"  vitmsn attention stage {100 * out['attention_peak_fraction']:.1f} % of peak; outside the GEMMs "
      f"(patch embedding + layer norms + other) {100 * out['outside_gemm_fraction']:.1f} % of the forward "
      "(medians over the rounds)")
print(json.dumps(out))
PY
