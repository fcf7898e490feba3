"""onnxruntime reference for `splitnas bench run`: median and p90 latency of one ONNX file
on the CPU execution provider with a fixed number of intra-op threads.

    python3 benches/pytorch/ort_latency.py v2.onnx --batch 1 --iters 20

Prints `p50_ms=<..> p90_ms=<..> images_per_s=<..>` like the splitnas benchmark.
"""
import argparse
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    s = ort.InferenceSession(a.file, opts, providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    shape = [a.batch] + [int(d) for d in inp.shape[1:]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    s.run(None, {inp.name: x})  # warm-up
    ts = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        s.run(None, {inp.name: x})
        ts.append((time.perf_counter() - t0) * 1e3)
    p50, p90 = np.percentile(ts, 50), np.percentile(ts, 90)
    print(f"p50_ms={p50:.2f} p90_ms={p90:.2f} images_per_s={a.batch * 1e3 / p50:.1f}")


if __name__ == "__main__":
    main()
