#!/usr/bin/env python3
"""Checks every ONNX file the tests left in a directory with tools nobody here wrote.

For each NAME.onnx:
  - onnx.checker.check_model(full_check=True) (with shape inference);
  - NAME.json ({"input_shape", "input", "logits", "tolerance"}): onnxruntime's logits on
    the saved input must match the saved Burn logits within the tolerance (max abs);
  - NAME.accuracy.json ({"test_acc", "test_limit"}): onnxruntime's accuracy on the first
    test_limit Fashion-MNIST test images, normalized with the mean/std read from the
    file's metadata, must equal the accuracy the training run reported.

Usage: onnx_check.py DIR [FASHION_MNIST_DIR]
"""

import gzip
import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    root = pathlib.Path(sys.argv[1])
    fmnist = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "/usr/share/datasets/fashion-mnist")
    files = sorted(root.glob("*.onnx"))
    if not files:
        sys.exit(f"no ONNX files in {root}: did the tests run with SPLITNAS_ONNX_CHECKS set?")
    compared = 0
    for path in files:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        meta = {p.key: p.value for p in model.metadata_props}
        if "splitnas_version" in meta:
            # Written by `splitnas export`: the issue fixes opset 17 and IR version 8.
            # Other files (PyTorch-exporter-style graphs from the runtime tests) keep
            # the opset they were written for.
            assert model.opset_import[0].version == 17 and model.ir_version == 8, path
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        golden = path.with_suffix(".json")
        if golden.exists():
            g = json.loads(golden.read_text())
            x = np.asarray(g["input"], dtype=np.float32).reshape(g["input_shape"])
            (logits,) = session.run(["logits"], {"input": x})
            want = np.asarray(g["logits"], dtype=np.float32).reshape(logits.shape)
            diff = float(np.max(np.abs(logits - want)))
            print(f"{path.name}: checker ok, onnxruntime vs Burn max abs {diff:.2e}")
            assert diff <= g["tolerance"], f"{path.name}: {diff} > {g['tolerance']}"
            compared += 1
        acc_file = path.with_name(path.stem + ".accuracy.json")
        if acc_file.exists():
            a = json.loads(acc_file.read_text())
            n = a["test_limit"]
            images = read_idx(fmnist / "t10k-images-idx3-ubyte.gz")[:n].astype(np.float32) / 255.0
            labels = read_idx(fmnist / "t10k-labels-idx1-ubyte.gz")[:n]
            mean = np.asarray(json.loads(meta["mean"]), dtype=np.float32)
            std = np.asarray(json.loads(meta["std"]), dtype=np.float32)
            x = ((images[:, None, :, :] - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
            correct = 0
            for i in range(0, n, 250):
                (logits,) = session.run(["logits"], {"input": x[i : i + 250]})
                correct += int(np.sum(np.argmax(logits, axis=1) == labels[i : i + 250]))
            acc = correct / n
            print(f"{path.name}: onnxruntime test accuracy {acc:.4f} on {n} Fashion-MNIST images, training run reported {a['test_acc']:.4f}")
            # An image whose two best logits tie within float noise may flip: allow one.
            assert abs(acc - a["test_acc"]) <= 1.0 / n + 1e-9, f"{path.name}: {acc} vs {a['test_acc']}"
            compared += 1
        if not golden.exists() and not acc_file.exists():
            print(f"{path.name}: checker ok")
    print(f"{len(files)} ONNX files checked, {compared} compared with onnxruntime")


if __name__ == "__main__":
    main()
