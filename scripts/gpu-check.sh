#!/usr/bin/env bash
# The CUDA check, for a machine with an NVIDIA GPU, CUDA and PyTorch but no Rust toolchain.
#
# Build here:   cargo build --release --features cuda && cp target/release/splitnas splitnas-cuda
# Run there:    scripts/gpu-check.sh ./splitnas-cuda [OUTDIR]
#
# Runs, on --device "$DEV": a search step at C=16 L=8, batch 256 of 3x32x32, K=4 (and K=1,
# to compare memory); the same step in PyTorch (benches/pytorch/search_step.py); a short
# search on synthetic data; one training epoch; `bench run` on the trained network at
# batch 1 and 256; then the runtime's logits on cuda against the CPU's. Prints one table
# (markdown) at the end; every row's full output is kept in OUTDIR.
# DEVICE=wgpu (or cpu) runs the same checks on another device; BATCH=N another batch.
set -uo pipefail
BIN="${1:?usage: scripts/gpu-check.sh SPLITNAS_CUDA_BINARY [OUTDIR]}"
OUT="${2:-gpu-check-out}"
DEV="${DEVICE:-cuda}"
BATCH="${BATCH:-256}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT"
rows=()
row() { rows+=("| $1 | $2 | $3 |"); }
# the last line of a command's output that holds KEY=..., or why there is none
pick() { grep -E "$2" "$1" | tail -1 || true; }

run() { # name, log, command...
  local name="$1" log="$OUT/$2"; shift 2
  echo "== $name: $*" | tee "$log"
  local t0=$(date +%s.%N)
  if "$@" >>"$log" 2>&1; then status=ok; else status="FAILED (exit $?)"; fi
  local t1=$(date +%s.%N)
  wall=$(python3 -c "print(f'{$t1-$t0:.1f} s')")
  echo "   $status, $wall" | tee -a "$log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$OUT/gpu.txt" 2>&1
GPU="$(head -1 "$OUT/gpu.txt")"

for k in 4 1; do
  run "search step K=$k" "step-k$k.txt" "$BIN" bench search-step --device "$DEV" --channels 16 \
    --layers 8 --batch-size "$BATCH" --image-size 32 --in-channels 3 --partial-k "$k" --steps 5
  row "splitnas search step, C=16 L=8 batch $BATCH 3x32x32 K=$k ($DEV)" "$status" \
    "$(pick "$OUT/step-k$k.txt" '^step_s=') $(pick "$OUT/step-k$k.txt" '^host_peak_rss_mb=' | cut -d' ' -f1-2); $(grep -m1 '^device:' "$OUT/step-k$k.txt")"
  if [ "$DEV" = cuda ] && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    run "pytorch step K=$k" "torch-k$k.txt" python3 "$HERE/benches/pytorch/search_step.py" \
      --device "$DEV" --channels 16 --layers 8 --batch-size "$BATCH" --image-size 32 --partial-k "$k" --steps 5
    row "PyTorch search step, same (benches/pytorch/search_step.py --device "$DEV")" "$status" \
      "$(pick "$OUT/torch-k$k.txt" '^step_s=') $(pick "$OUT/torch-k$k.txt" '^device_peak_mb=')"
  else
    row "PyTorch search step K=$k" "skipped" "no torch with CUDA here"
  fi
done

run "short search" "search.txt" "$BIN" search --device "$DEV" --dataset synthetic --channels 16 \
  --layers 8 --epochs 2 --warmup-epochs 1 --batch-size 64 --train-limit 2048 --out "$OUT/search"
row "search, synthetic 2048 images, 2 epochs, C=16 L=8 batch 64 ($DEV)" "$status" \
  "$(grep -E '^epoch 2/' "$OUT/search.txt" | tail -1)"

run "training epoch" "train.txt" "$BIN" train --device "$DEV" --dataset synthetic \
  --genotype DARTS_V2 --channels 16 --layers 8 --epochs 1 --batch-size 256 \
  --train-limit 10000 --test-limit 1000 --out "$OUT/train"
row "train DARTS_V2 C=16 L=8, 1 epoch of 10000 synthetic images, batch 256 ($DEV)" "$status" \
  "$(grep -E '^epoch 1/' "$OUT/train.txt" | tail -1)"

run "export" "export.txt" "$BIN" export --run "$OUT/train" --out "$OUT/net.onnx"
for b in 1 256; do
  run "bench run b$b" "run-b$b.txt" "$BIN" bench run "$OUT/net.onnx" --device "$DEV" --batch "$b" --iters 20
  row "bench run, DARTS_V2 C=16 L=8, batch $b ($DEV)" "$status" "$(pick "$OUT/run-b$b.txt" 'p50_ms=')"
done

python3 - "$OUT/x.npy" <<'EOF'
import struct, sys
# 4 images 3x32x32, a fixed pattern, written as .npy without numpy
n = 4 * 3 * 32 * 32
vals = [((i * 7919) % 1000) / 500.0 - 1.0 for i in range(n)]
header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 3, 32, 32), }"
header += " " * (63 - (10 + len(header)) % 64) + "\n"
with open(sys.argv[1], "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    f.write(struct.pack(f"<{n}f", *vals))
EOF
for d in cpu "$DEV"; do
  run "logits $d" "logits-$d.txt" "$BIN" run "$OUT/net.onnx" --device "$d" --input "$OUT/x.npy" \
    --output "$OUT/logits-$d.npy"
done
diff=$(python3 - "$OUT/logits-cpu.npy" "$OUT/logits-$DEV.npy" <<'EOF'
import struct, sys
def load(p):
    b = open(p, "rb").read()
    h = struct.unpack("<H", b[8:10])[0]
    d = b[10 + h:]
    return struct.unpack(f"<{len(d) // 4}f", d)
a, b = load(sys.argv[1]), load(sys.argv[2])
print(f"{max(abs(x - y) for x, y in zip(a, b)):.2e}" if len(a) == len(b) and a else "n/a")
EOF
)
row "runtime logits, $DEV vs cpu (max abs, 4 images; must be <= 1e-4)" "$([ "$diff" != n/a ] && python3 -c "print('ok' if $diff <= 1e-4 else 'FAILED')" 2>/dev/null || echo FAILED)" "$diff"

echo
echo "GPU: $GPU; binary: $BIN ($(stat -c %s "$BIN") bytes); $(date -u +%F)"
echo
echo "| check | status | figures |"
echo "|---|---|---|"
printf '%s\n' "${rows[@]}"
