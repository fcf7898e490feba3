#!/usr/bin/env python3
"""float32 .npy helpers for scripts/arm-check.sh (standard library only).

  npy_tool.py input JSON OUT.npy        the "input" and "input_shape" of a kept test file
  npy_tool.py make N,C,H,W OUT.npy      a deterministic input of that shape
  npy_tool.py diff A.npy B.npy TOL      max |a - b|; exits 1 when shapes differ or it is > TOL
"""

import ast
import json
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
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
