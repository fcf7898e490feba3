#!/usr/bin/env bash
# The Cortex-M4 firmware under qemu-system-arm (mps2-an386) against `splitnas run` on this
# host: an int8 file compiled with `splitnas compile --target cortex-m4`, then for each of
# COUNT Fashion-MNIST test images (normalized with the plan's model.json) the firmware's
# `logits=` codes, dequantized with its `output_quant=` line, must equal bit for bit the
# logits `splitnas run model.plan --input IMAGE.npy --output OUT.npy` writes.
#
# Usage: scripts/firmware-check.sh [INT8.onnx] [COUNT]
#   without INT8.onnx: DARTS_V2 C=8 L=5 (the quickstart's size) exported with a seed and
#   quantized on 64 Fashion-MNIST training images, as tests/compile.rs does
#   SPLITNAS=PATH      the host splitnas (default target/debug/splitnas, built if missing)
#   CARGO_TARGET_DIR   where the firmware builds (default firmware/target)
# Needs: rustup target thumbv7em-none-eabihf, qemu-system-arm, python3, the Fashion-MNIST
# package (dataset-fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
splitnas="${SPLITNAS:-target/debug/splitnas}"
[ -x "$splitnas" ] || cargo build -p splitnas --bin splitnas
splitnas="$(realpath "$splitnas")"
npy="python3 $root/scripts/npy_tool.py"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
int8="${1:-}"
count="${2:-4}"
if [ -z "$int8" ]; then
  int8="$work/int8.onnx"
  "$splitnas" export --genotype DARTS_V2 --channels 8 --layers 5 --in-channels 1 \
    --image-size 28 --classes 10 --init-seed 2 --out "$work/float.onnx"
  "$splitnas" quantize "$work/float.onnx" --out "$int8" --dataset fashion-mnist \
    --calibration-images 64
fi
"$splitnas" compile "$int8" --target cortex-m4 --out "$work/m4"
plan="$work/m4/model.plan"
start=$SECONDS
same=0
while read -r i label; do
  img="$work/img$i.npy"
  firmware/run-qemu.sh "$plan" "$img" </dev/null >"$work/fw$i.log" 2>&1 || {
    cat "$work/fw$i.log"
    echo "firmware-check: image $i: the firmware failed" >&2
    exit 1
  }
  "$splitnas" run "$plan" --input "$img" --output "$work/host$i.npy" >/dev/null 2>&1
  if $npy firmware "$work/fw$i.log" "$work/host$i.npy"; then
    same=$((same + 1))
    echo "firmware-check: image $i (label $label): $(grep '^class=' "$work/fw$i.log"), logits bit-identical to the host"
  else
    echo "firmware-check: image $i: the firmware's logits differ from the host's" >&2
    exit 1
  fi
done < <($npy fmnist "$work/m4/model.json" 0 "$count" "$work/img")
[ "$same" = "$count" ] || { echo "firmware-check: $same of $count images ran" >&2; exit 1; }
echo "firmware-check: $count of $count images bit-identical ($((SECONDS - start)) s under qemu)"
