#!/usr/bin/env bash
# Downloads facebook/vit-msn-large-7 from the Hugging Face Hub, checks the files, and converts them
# with vitmsn-convert into one self-contained file: weights/vit-msn-large-7.safetensors (config and
# preprocessor settings embedded), where the vitmsn programs look by default.
#
#   weights/fetch_vit_msn_large_7.sh [--convert PATH_TO_vitmsn-convert] [--dtype f32|bf16|f16|int8]
#
# Needs curl and network access to huggingface.co; fails within seconds when offline.
set -euo pipefail

repo="facebook/vit-msn-large-7"
hub="${HF_ENDPOINT:-https://huggingface.co}"
here="$(cd "$(dirname "$0")" && pwd)"
dest="$here/vit-msn-large-7"
out="$here/vit-msn-large-7.safetensors"
convert="${VITMSN_CONVERT:-$here/../build/examples/vitmsn-convert}"
dtype="f32"
# 303,513,600 float32 parameters; either checkpoint is this plus a small header/pickle.
min_bytes=1214054400
max_bytes=$((min_bytes + 16 * 1024 * 1024))

while [ $# -gt 0 ]; do
  case "$1" in
    --convert) convert="$2"; shift 2 ;;
    --dtype) dtype="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "error: unknown option $1" >&2; exit 2 ;;
  esac
done

die() { echo "error: $*" >&2; exit 1; }
command -v curl >/dev/null || die "curl is not installed (apt-get install curl)"
[ -x "$convert" ] || die "vitmsn-convert not found at $convert: build first (cmake --build build) or pass --convert PATH"

# Fail fast offline: one HEAD request with a short timeout.
if ! curl -fsSI --connect-timeout 10 --max-time 20 "$hub/$repo/resolve/main/config.json" >/dev/null 2>&1; then
  die "cannot reach $hub (offline, or the Hub is blocked here). Download these files elsewhere into $dest/:
  $hub/$repo/resolve/main/config.json
  $hub/$repo/resolve/main/preprocessor_config.json
  $hub/$repo/resolve/refs%2Fpr%2F3/model.safetensors   (or $hub/$repo/resolve/main/pytorch_model.bin)
then run: $convert $dest $out"
fi

mkdir -p "$dest"
fetch() {  # fetch URL FILE: download to FILE.part, then rename
  echo "downloading $1"
  curl -fL --progress-bar --retry 3 --connect-timeout 20 -o "$2.part" -C - "$1" || { rm -f "$2.part"; return 1; }
  mv "$2.part" "$2"
}
fetch "$hub/$repo/resolve/main/config.json" "$dest/config.json"
fetch "$hub/$repo/resolve/main/preprocessor_config.json" "$dest/preprocessor_config.json"
if [ ! -s "$dest/model.safetensors" ] && [ ! -s "$dest/pytorch_model.bin" ]; then
  fetch "$hub/$repo/resolve/refs%2Fpr%2F3/model.safetensors" "$dest/model.safetensors" ||
    fetch "$hub/$repo/resolve/main/pytorch_model.bin" "$dest/pytorch_model.bin" ||
    die "could not download the weights of $repo"
fi

weights="$dest/model.safetensors"
[ -s "$weights" ] || weights="$dest/pytorch_model.bin"
size=$(stat -c %s "$weights")
if [ "$size" -lt "$min_bytes" ] || [ "$size" -gt "$max_bytes" ]; then
  die "$weights has $size bytes; expected $min_bytes..$max_bytes for ViT-L/7 (incomplete download?). Delete it and re-run."
fi
grep -q '"hidden_size": *1024' "$dest/config.json" || die "$dest/config.json does not describe ViT-L (hidden_size 1024)"

"$convert" --dtype "$dtype" --force "$dest" "$out"
echo "done: $out — the vitmsn programs now use it by default (run them from $(dirname "$here"))"
