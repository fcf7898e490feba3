"""PyTorch reference for `splitnas bench search-step`: one PC-DARTS search iteration
(architecture step on a validation batch, then weight step on a training batch, first order)
on synthetic data, written from the definitions in shared/reference/darts.md.

    python3 benches/pytorch/search_step.py --partial-k 4 --batch-size 16 --steps 3

Prints `step_s=<median seconds> images_per_s=<..>` like the splitnas benchmark. Peak memory:
run it under `/usr/bin/time -v`. Threads: `--threads` (default 2, the CI machine's cores).
No CSC identity connection (the PC-DARTS code has none); edge normalization on.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRIMITIVES = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
              "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


def bn(c):
    return nn.BatchNorm2d(c, affine=False)


class ReLUConvBN(nn.Sequential):
    def __init__(self, ci, co, k, s, p):
        super().__init__(nn.ReLU(), nn.Conv2d(ci, co, k, s, p, bias=False), bn(co))


class DilConv(nn.Sequential):
    def __init__(self, c, k, s, p, d):
        super().__init__(nn.ReLU(), nn.Conv2d(c, c, k, s, p, dilation=d, groups=c, bias=False),
                         nn.Conv2d(c, c, 1, bias=False), bn(c))


class SepConv(nn.Sequential):
    def __init__(self, c, k, s, p):
        super().__init__(DilConv(c, k, s, p, 1), DilConv(c, k, 1, p, 1))


class Zero(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.s = s

    def forward(self, x):
        return x[:, :, ::self.s, ::self.s] * 0.0


class FactorizedReduce(nn.Module):
    def __init__(self, ci, co):
        super().__init__()
        self.a = nn.Conv2d(ci, co // 2, 1, 2, bias=False)
        self.b = nn.Conv2d(ci, co // 2, 1, 2, bias=False)
        self.bn = bn(co)

    def forward(self, x):
        x = F.relu(x)
        return self.bn(torch.cat([self.a(x), self.b(x[:, :, 1:, 1:])], dim=1))


def make_op(name, c, s):
    if name == "none":
        return Zero(s)
    if name == "max_pool_3x3":
        return nn.Sequential(nn.MaxPool2d(3, s, 1), bn(c))
    if name == "avg_pool_3x3":
        return nn.Sequential(nn.AvgPool2d(3, s, 1, count_include_pad=False), bn(c))
    if name == "skip_connect":
        return nn.Identity() if s == 1 else FactorizedReduce(c, c)
    k = int(name[-1])
    if name.startswith("sep"):
        return SepConv(c, k, s, k // 2)
    return DilConv(c, k, s, k - 1, 2)


def shuffle(x, groups):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


class MixedOp(nn.Module):
    def __init__(self, c, s, k):
        super().__init__()
        self.k = k
        self.pool = nn.MaxPool2d(2, 2)
        self.ops = nn.ModuleList(make_op(p, c // k, s) for p in PRIMITIVES)

    def forward(self, x, w):
        m = x.shape[1] // self.k
        part, rest = x[:, :m], x[:, m:]
        y = sum(wi * op(part) for wi, op in zip(w, self.ops))
        if self.k == 1:
            return y
        if y.shape[2] != x.shape[2]:
            rest = self.pool(rest)
        return shuffle(torch.cat([y, rest], dim=1), self.k)


class Cell(nn.Module):
    def __init__(self, cpp, cp, c, reduction, reduction_prev, k):
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(cpp, c) if reduction_prev else ReLUConvBN(cpp, c, 1, 1, 0)
        self.pre1 = ReLUConvBN(cp, c, 1, 1, 0)
        self.ops = nn.ModuleList()
        for i in range(4):
            for j in range(2 + i):
                self.ops.append(MixedOp(c, 2 if reduction and j < 2 else 1, k))

    def forward(self, s0, s1, alphas, betas):
        states = [self.pre0(s0), self.pre1(s1)]
        offset = 0
        for i in range(4):
            n = 2 + i
            b = F.softmax(betas[offset:offset + n], dim=-1)
            states.append(sum(b[j] * self.ops[offset + j](h, alphas[offset + j])
                              for j, h in enumerate(states)))
            offset += n
        return torch.cat(states[2:], dim=1)


class Network(nn.Module):
    def __init__(self, c, layers, classes, k, in_ch):
        super().__init__()
        cc = 3 * c
        self.stem = nn.Sequential(nn.Conv2d(in_ch, cc, 3, padding=1, bias=False), nn.BatchNorm2d(cc))
        cpp, cp, cc = cc, cc, c
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                cc *= 2
            self.cells.append(Cell(cpp, cp, cc, reduction, reduction_prev, k))
            reduction_prev = reduction
            cpp, cp = cp, 4 * cc
        self.classifier = nn.Linear(cp, classes)
        self.alphas = nn.Parameter(1e-3 * torch.randn(2, 14, len(PRIMITIVES)))
        self.betas = nn.Parameter(1e-3 * torch.randn(2, 14))

    def arch(self):
        return [self.alphas, self.betas]

    def weights(self):
        return [p for n, p in self.named_parameters() if n not in ("alphas", "betas")]

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            t = 1 if cell.reduction else 0
            s0, s1 = s1, cell(s0, s1, F.softmax(self.alphas[t], dim=-1), self.betas[t])
        return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--partial-k", type=int, default=4)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--in-channels", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    net = Network(a.channels, a.layers, 10, a.partial_k, a.in_channels).to(dev)
    wopt = torch.optim.SGD(net.weights(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    aopt = torch.optim.Adam(net.arch(), lr=6e-4, betas=(0.5, 0.999), weight_decay=1e-3)

    def batch():
        return (torch.randn(a.batch_size, a.in_channels, a.image_size, a.image_size, device=dev),
                torch.randint(0, 10, (a.batch_size,), device=dev))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for _ in range(a.steps):
        (xt, yt), (xv, yv) = batch(), batch()
        sync()
        t0 = time.perf_counter()
        aopt.zero_grad()
        F.cross_entropy(net(xv), yv).backward()
        aopt.step()
        wopt.zero_grad()
        F.cross_entropy(net(xt), yt).backward()
        nn.utils.clip_grad_norm_(net.weights(), 5.0)
        wopt.step()
        sync()
        times.append(time.perf_counter() - t0)
        print(f"step {len(times)}: {times[-1]:.3f} s", flush=True)
    s = statistics.median(times)
    print(f"step_s={s:.4f} images_per_s={a.batch_size / s:.1f}")
    if dev.type == "cuda":
        print(f"device_peak_mb={torch.cuda.max_memory_allocated() / 2**20:.1f}")


if __name__ == "__main__":
    main()
