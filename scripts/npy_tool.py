#!/usr/bin/env python3
"""float32 .npy helpers for scripts/arm-check.sh and scripts/firmware-check.sh (standard
library only).

  npy_tool.py input JSON OUT.npy        the "input" and "input_shape" of a kept test file
  npy_tool.py make N,C,H,W OUT.npy      a deterministic input of that shape
  npy_tool.py diff A.npy B.npy TOL      max |a - b|; exits 1 when shapes differ or it is > TOL
  npy_tool.py fmnist MODEL.json FIRST COUNT PREFIX
                                        Fashion-MNIST test images FIRST.. as PREFIX<i>.npy
                                        ([1, 1, 28, 28], (pixel / 255 - mean) / std with
                                        model.json's mean and std); prints "<i> <label>"
  npy_tool.py firmware LOG HOST.npy     the firmware's last `logits=` codes dequantized
                                        with its `output_quant=` line against the host's
                                        logits, bit for bit; exits 1 when they differ
"""

import ast
import gzip
import json
import re
import struct
import sys


def write(path, shape, values):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % "".join(
        f"{d}, " for d in shape
    )
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
        f.write(struct.pack(f"<{len(values)}f", *values))


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        sys.exit(f"{path}: not a .npy file")
    major = data[6]
    (hlen,), start = (struct.unpack("<H", data[8:10]), 10) if major == 1 else (struct.unpack("<I", data[8:12]), 12)
    header = ast.literal_eval(data[start : start + hlen].decode("latin1"))
    if header["descr"] != "<f4" or header["fortran_order"]:
        sys.exit(f"{path}: not little-endian float32 in C order")
    count = 1
    for d in header["shape"]:
        count *= d
    body = data[start + hlen :]
    return tuple(header["shape"]), struct.unpack(f"<{count}f", body[: 4 * count])


def main():
    cmd = sys.argv[1]
    if cmd == "input":
        j = json.load(open(sys.argv[2]))
        write(sys.argv[3], j["input_shape"], j["input"])
    elif cmd == "make":
        shape = [int(d) for d in sys.argv[2].split(",")]
        count = 1
        for d in shape:
            count *= d
        write(sys.argv[3], shape, [((i * 7919) % 2000) / 1000.0 - 1.0 for i in range(count)])
    elif cmd == "diff":
        (sa, a), (sb, b) = read(sys.argv[2]), read(sys.argv[3])
        if sa != sb:
            print(f"shapes differ: {sa} vs {sb}")
            sys.exit(1)
        d = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
        print(f"{d:.2e}")
        sys.exit(0 if d <= float(sys.argv[4]) else 1)
    elif cmd == "fmnist":
        meta = json.load(open(sys.argv[2]))
        mean, std = meta["mean"][0], meta["std"][0]
        first, count, prefix = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        root = "/usr/share/datasets/fashion-mnist/t10k-"
        with gzip.open(root + "images-idx3-ubyte.gz") as f:
            images = f.read()[16:]
        with gzip.open(root + "labels-idx1-ubyte.gz") as f:
            labels = f.read()[8:]
        for i in range(first, first + count):
            pixels = images[i * 784 : (i + 1) * 784]
            write(f"{prefix}{i}.npy", [1, 1, 28, 28], [(p / 255 - mean) / std for p in pixels])
            print(i, labels[i])
    elif cmd == "firmware":
        log = open(sys.argv[2]).read()
        q = re.search(r"^output_quant=\S+,(-?\d+) scale_bits=0x([0-9a-f]{8})$", log, re.M)
        lines = log.strip().splitlines()
        if not q or not lines or not lines[-1].startswith("logits="):
            sys.exit(f"{sys.argv[2]}: no output_quant= line or last line logits=")
        zero = int(q.group(1))
        (scale,) = struct.unpack("<f", bytes.fromhex(q.group(2))[::-1])
        codes = [int(c) for c in lines[-1][len("logits=") :].split(",")]
        # (code - zero) is exact and so is its product with a float32 in double precision:
        # one rounding to float32, as the host's float32 multiplication does
        fw = [struct.unpack("<f", struct.pack("<f", (c - zero) * scale))[0] for c in codes]
        shape, host = read(sys.argv[3])
        bits = lambda v: struct.pack(f"<{len(v)}f", *v)
        if len(host) != len(fw) or bits(host) != bits(fw):
            print(f"firmware {fw}\nhost     {list(host)}")
            sys.exit(1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
