#!/usr/bin/env bash
# Build the Cortex-M4 firmware with one plan and one image and run it on qemu's mps2-an386
# (Cortex-M4 with FPU), printing over semihosting; the last line is `logits=<int8 codes>`.
#
#   firmware/run-qemu.sh PLAN INPUT.npy
#
# PLAN: `splitnas compile FILE-int8.onnx --target cortex-m4 --out DIR` writes DIR/model.plan.
# INPUT.npy: one image, float32 NCHW [1, C, H, W], normalized as the network expects (what
# `splitnas run PLAN --input INPUT.npy` takes); the firmware quantizes it with the plan's
# input scale. Needs: rustup target thumbv7em-none-eabihf, qemu-system-arm.
# CARGO_TARGET_DIR is honoured; QEMU_TIMEOUT (seconds, default 600) bounds the run.
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 PLAN INPUT.npy" >&2
  exit 2
fi
for f in "$1" "$2"; do
  [ -f "$f" ] || { echo "error: $f: no such file" >&2; exit 2; }
done
here="$(cd "$(dirname "$0")" && pwd)"
command -v qemu-system-arm >/dev/null || {
  echo "error: qemu-system-arm not found (Debian: apt-get install qemu-system-arm)" >&2
  exit 2
}
export SPLITNAS_PLAN="$(realpath "$1")" SPLITNAS_INPUT="$(realpath "$2")"
target_dir="${CARGO_TARGET_DIR:-$here/target}"
cargo build --quiet --release --manifest-path "$here/Cargo.toml" \
  --target thumbv7em-none-eabihf --target-dir "$target_dir"
elf="$target_dir/thumbv7em-none-eabihf/release/splitnas-firmware"
exec timeout "${QEMU_TIMEOUT:-600}" qemu-system-arm -M mps2-an386 -nographic \
  -semihosting-config enable=on,target=native -kernel "$elf"
