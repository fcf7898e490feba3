#!/usr/bin/env bash
# splitnas-run on ARM, under qemu-user, against `splitnas run` on this x86_64 host:
#  1. builds splitnas-run and the kernel, runtime and micro tests for each ARM target (test
#     profile) and runs the tests under qemu (NEON paths against the portable ones on
#     aarch64; the portable paths on armv7);
#  2. runs every ONNX file on the x86_64 `splitnas run` and on each target's `splitnas-run`
#     (x86_64's too): logits within 1e-5 (max abs) and the same output lines;
#  3. bad input (a truncated file, a wrong input shape, an unknown device): the same error
#     line and exit status on every target.
# Files: DARTS_V2 and PC_DARTS exported here with `splitnas export`, plus each NAME.onnx
# with a NAME.json input in ONNX_DIR (what the tests keep with SPLITNAS_ONNX_CHECKS set: the
# quickstart's network, the PyTorch-exporter-style files, the runtime tests' exports).
#
# Usage: scripts/arm-check.sh [ONNX_DIR]
#   SPLITNAS=PATH       the x86_64 splitnas (default target/debug/splitnas, built if missing)
#   SPLITNAS_RUN=PATH   the x86_64 splitnas-run (default target/debug/splitnas-run, same)
#   ARM_TARGETS="..."   default: aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf
#   ARM_TESTS=0         skip step 1's cargo tests
#   CARGO_TARGET_DIR    where the ARM builds go (default target/)
# Needs: gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf qemu-user (Debian), the rustup
# targets, python3; linkers and qemu runners are set in .cargo/config.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
onnx_dir="${1:-}"
targets="${ARM_TARGETS:-aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf}"
splitnas="${SPLITNAS:-target/debug/splitnas}"
splitnas_run="${SPLITNAS_RUN:-target/debug/splitnas-run}"
tol=1e-5
arm_target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
npy="python3 $root/scripts/npy_tool.py"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

runner() {
  case "$1" in
    aarch64-*) echo "qemu-aarch64 -L /usr/aarch64-linux-gnu" ;;
    armv7-*) echo "qemu-arm -L /usr/arm-linux-gnueabihf" ;;
    *) echo "" ;;
  esac
}

# the x86_64 binaries: what `cargo test --workspace` built, else built here
[ -x "$splitnas" ] || cargo build -p splitnas --bin splitnas
[ -x "$splitnas_run" ] || cargo build -p splitnas-runtime --bin splitnas-run
splitnas="$(realpath "$splitnas")"
splitnas_run="$(realpath "$splitnas_run")"
# one test build per target also links its splitnas-run (the runtime has integration tests)
for t in $targets; do
  start=$SECONDS
  cargo test -p splitnas-kernels -p splitnas-runtime -p splitnas-micro --target "$t" --no-run
  echo "arm-check: $t built in $((SECONDS - start)) s"
  if [ "${ARM_TESTS:-1}" != 0 ]; then
    start=$SECONDS
    cargo test -p splitnas-kernels -p splitnas-runtime -p splitnas-micro --target "$t"
    echo "arm-check: $t tests ran in $((SECONDS - start)) s"
  fi
done

# the files and their inputs
mkdir -p "$work/files"
for g in DARTS_V2 PC_DARTS; do
  "$splitnas" export --genotype "$g" --init-seed 3 --out "$work/files/$g.onnx" >/dev/null
  $npy make 2,3,32,32 "$work/files/$g.in.npy"
done
if [ -n "$onnx_dir" ]; then
  for f in "$onnx_dir"/*.onnx; do
    stem="$(basename "$f" .onnx)"
    [ -f "$onnx_dir/$stem.json" ] || continue
    cp "$f" "$work/files/$stem.onnx"
    $npy input "$onnx_dir/$stem.json" "$work/files/$stem.in.npy"
  done
fi
head -c 3000 "$work/files/DARTS_V2.onnx" >"$work/files/truncated.onnx"
$npy make 1,3,16,16 "$work/files/wrong_shape.npy"

# runs `$@` in directory $1 (created), keeping stdout, stderr and the exit status there
run_in() {
  local dir="$1"
  shift
  mkdir -p "$dir"
  (cd "$dir" && set +e && "$@" >out.txt 2>err.txt; echo $? >status.txt)
}

bad_cases() {
  local d="$work/files"
  echo "truncated|run $d/truncated.onnx --input $d/DARTS_V2.in.npy"
  echo "wrong_shape|run $d/DARTS_V2.onnx --input $d/wrong_shape.npy"
  echo "device|run $d/DARTS_V2.onnx --input $d/DARTS_V2.in.npy --device tpu"
  echo "top_k|run $d/DARTS_V2.onnx --input $d/DARTS_V2.in.npy --top-k 0"
  echo "bench_batch|bench run $d/DARTS_V2.onnx --batch 0"
}

stems="$(cd "$work/files" && ls *.onnx | sed 's/\.onnx$//' | grep -v '^truncated$')"
for s in $stems; do
  run_in "$work/ref/$s" "$splitnas" run "$work/files/$s.onnx" --input "$work/files/$s.in.npy" --output logits.npy
  [ "$(cat "$work/ref/$s/status.txt")" = 0 ] || { cat "$work/ref/$s/err.txt"; exit 1; }
done
bad_cases | while IFS='|' read -r name args; do
  run_in "$work/ref/bad_$name" "$splitnas" $args
done

fail=0
for t in x86_64 $targets; do
  if [ "$t" = x86_64 ]; then bin="$splitnas_run"; else bin="$arm_target/$t/debug/splitnas-run"; fi
  r="$(runner "$t")"
  for s in $stems; do
    dir="$work/$t/$s"
    run_in "$dir" $r "$bin" "$work/files/$s.onnx" --input "$work/files/$s.in.npy" --output logits.npy
    if [ "$(cat "$dir/status.txt")" != 0 ]; then
      echo "FAIL $t $s: exit $(cat "$dir/status.txt"): $(cat "$dir/err.txt")"; fail=1; continue
    fi
    if d="$($npy diff "$dir/logits.npy" "$work/ref/$s/logits.npy" $tol)"; then
      echo "ok   $t $s: logits max abs diff $d"
    else
      echo "FAIL $t $s: logits max abs diff $d (tolerance $tol)"; fail=1
    fi
    cmp -s "$dir/out.txt" "$work/ref/$s/out.txt" || { echo "FAIL $t $s: output lines differ"; diff "$dir/out.txt" "$work/ref/$s/out.txt" || true; fail=1; }
  done
  while IFS='|' read -r name args; do
    dir="$work/$t/bad_$name"
    # `splitnas run X` is `splitnas-run X`, `splitnas bench run X` is `splitnas-run bench X`
    run_in "$dir" $r "$bin" $(echo "$args" | sed -e 's/^run //' -e 's/^bench run /bench /')
    ref="$work/ref/bad_$name"
    if [ "$(cat "$dir/status.txt")" = "$(cat "$ref/status.txt")" ] && cmp -s "$dir/err.txt" "$ref/err.txt" && [ "$(cat "$ref/status.txt")" != 0 ]; then
      echo "ok   $t bad input $name: exit $(cat "$dir/status.txt"): $(head -c 160 "$dir/err.txt")"
    else
      echo "FAIL $t bad input $name: exit $(cat "$dir/status.txt") vs $(cat "$ref/status.txt")"
      diff "$dir/err.txt" "$ref/err.txt" || true
      fail=1
    fi
  done < <(bad_cases)
  # bench runs and prints its contract line (under qemu the figures mean nothing)
  run_in "$work/$t/bench" $r "$bin" bench "$work/files/PC_DARTS.onnx" --iters 1
  grep -q '^p50_ms=' "$work/$t/bench/out.txt" || { echo "FAIL $t bench: $(cat "$work/$t/bench/err.txt")"; fail=1; }
done
[ "$fail" = 0 ] && echo "arm-check: all files and error cases agree" || { echo "arm-check: FAILED"; exit 1; }
