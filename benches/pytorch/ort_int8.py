"""onnxruntime reference for `splitnas quantize`: onnxruntime's own post-training
quantization of the same float file on the same calibration images, and the splitnas QDQ
file run by onnxruntime beside the splitnas runtime.

    splitnas quantize float.onnx --out int8.onnx --save-calibration cal.npy
    python3 benches/pytorch/ort_int8.py float.onnx int8.onnx cal.npy \
        --splitnas target/release/splitnas [--method minmax] [--test-images 10000]

On the Fashion-MNIST test split (normalized with the mean/std in the float file's
metadata) it prints one line per file and method:
  - `float` (onnxruntime on the float file),
  - `ort_qdq_<method>`: onnxruntime's `quantize_static(QDQ, per_channel=True, QInt8
    activations and weights)` calibrated on `cal.npy`, run by onnxruntime,
  - `splitnas_qdq`: the splitnas file run by onnxruntime,
each with accuracy and file size, then the agreement of the splitnas runtime
(`splitnas run int8.onnx --input test.npy --output ...`) with onnxruntime on the splitnas
file: top-1 agreement and the largest logit difference in quantization steps of the
logits (the scale of the file's last DequantizeLinear).
"""
import argparse
import gzip
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_npy(path, x):
    np.save(path, np.ascontiguousarray(x, dtype=np.float32))


class Reader(CalibrationDataReader):
    def __init__(self, name, cal, batch=32):
        self.items = [{name: cal[i : i + batch]} for i in range(0, len(cal), batch)]

    def get_next(self):
        return self.items.pop(0) if self.items else None


def logits_of(path, x, batch=256):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("float_file")
    ap.add_argument("int8_file")
    ap.add_argument("calibration")
    ap.add_argument("--splitnas", help="splitnas binary: compare its runtime with onnxruntime")
    ap.add_argument("--method", action="append", choices=["minmax", "percentile", "entropy"])
    ap.add_argument("--test-images", type=int, default=10000)
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--keep", help="directory for onnxruntime's QDQ files")
    a = ap.parse_args()
    model = onnx.load(a.float_file)
    meta = {p.key: p.value for p in model.metadata_props}
    mean = np.asarray(json.loads(meta["mean"]), np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(json.loads(meta["std"]), np.float32).reshape(1, -1, 1, 1)
    d = pathlib.Path(a.data_dir)
    images = read_idx(d / "t10k-images-idx3-ubyte.gz")[: a.test_images]
    labels = read_idx(d / "t10k-labels-idx1-ubyte.gz")[: a.test_images].astype(np.int64)
    x = ((images.astype(np.float32) / 255.0)[:, None] - mean) / std
    cal = np.load(a.calibration).astype(np.float32)
    name = model.graph.input[0].name
    out = pathlib.Path(a.keep or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    n = len(labels)

    def line(tag, path, logits):
        acc = float(np.mean(np.argmax(logits, 1) == labels))
        print(f"{tag} acc={acc:.4f} size={os.path.getsize(path)} test_images={n}")

    line("float", a.float_file, logits_of(a.float_file, x))
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    for m in a.method or ["minmax"]:
        path = out / f"ort_qdq_{m}.onnx"
        quantize_static(
            a.float_file,
            str(path),
            Reader(name, cal),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[m],
        )
        line(f"ort_qdq_{m}", path, logits_of(path, x))
    ours = logits_of(a.int8_file, x)
    line("splitnas_qdq", a.int8_file, ours)
    if a.splitnas:
        q = onnx.load(a.int8_file)
        inits = {t.name: t for t in q.graph.initializer}
        last = next(nd for nd in q.graph.node if q.graph.output[0].name in nd.output)
        if last.op_type != "DequantizeLinear":
            sys.exit(f"{a.int8_file}: the output comes from {last.op_type}, not DequantizeLinear")
        step = float(onnx.numpy_helper.to_array(inits[last.input[1]]))
        test = out / "test.npy"
        write_npy(test, x)
        got = out / "runtime_logits.npy"
        r = subprocess.run(
            [a.splitnas, "run", a.int8_file, "--input", str(test), "--output", str(got), "--top-k", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if r.returncode != 0:
            sys.exit(f"splitnas run failed: {r.stderr}")
        mine = np.load(got).reshape(ours.shape)
        agree = float(np.mean(np.argmax(mine, 1) == np.argmax(ours, 1)))
        steps = float(np.max(np.abs(mine - ours)) / step)
        acc = float(np.mean(np.argmax(mine, 1) == labels))
        print(
            f"runtime_vs_onnxruntime top1_agreement={agree:.4f} max_logit_diff_steps={steps:.2f} "
            f"runtime_int8_acc={acc:.4f} logit_step={step:.6g} test_images={n}"
        )


if __name__ == "__main__":
    main()
