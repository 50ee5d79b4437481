#!/usr/bin/env python3
"""PyTorch side of `make peers-train`: the two mini networks of Kiln's training
fixtures (and, for make peers-train-inception, Inception-v4), trained with
the same recipe, timed.

The networks mirror archs/mini_inception.kiln ("inc") and
archs/mini_inception_resnet.kiln ("res"), which are the PyTorch models that
generated ../shared/fixtures/training (its README, section 1): module names,
and so state_dict keys and order, are the fixtures'. `--check-fixtures DIR`
proves the mirror: it loads DIR/m.init.safetensors with strict key checking,
compares the state_dict's names, shapes and order with DIR/m.state_dict.tsv,
and replays the fixture's three float64 RMSProp steps, whose losses must equal
index.json's losses_f64 to 1e-9.

The recipe (Szegedy et al. 2016, section 4; the fixtures' README, section 2):
RMSProp in PyTorch's form (lr 0.045, alpha 0.9, eps 1.0, momentum 0.9),
cross-entropy with label smoothing 0.1, BatchNorm in training mode, batch 128,
channels_last tensors (oneDNN's preferred layout on CPU), torch.set_num_threads.
Images are Fashion-MNIST's training set, normalised (p/255 - 0.2860)/0.3530 as
kiln train does, without augmentation (the driver runs kiln train with
--crop-pad 0 --flip=false to match). Timing: --warmup steps untimed, then
--steps steps between two time.perf_counter() calls; one JSON line out.

--net inception_v4 (torch_inception_v4.py, timm's module tree) trains on
one fixed synthetic batch of --input (uniform [-1, 1) images, labels i mod
1000), reused every step, as bench/train/kilnstep does on Kiln's side; the
JSON line then also carries each timed step's seconds and the resident set
after the steps. `--check-names TSV` compares its state_dict with timm's
(../shared/timm_state_dict_inception_v4.tsv).

Needs python3-torch (PyTorch 1.13 in Debian) and numpy; no other package.
"""
import argparse
import gzip
import json
import os
import resource
import struct
import sys
import time

import numpy as np
import torch
from torch import nn

FASHION = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def cbr(cin, cout, k, stride=1):
    """The fixtures' CBR unit: bias-free conv (.0), BatchNorm eps 1e-3 (.1),
    ReLU (.2), "same" padding k//2 per axis."""
    k = (k, k) if isinstance(k, int) else k
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=(k[0] // 2, k[1] // 2), bias=False),
        nn.BatchNorm2d(cout, eps=1e-3),
        nn.ReLU(inplace=True),
    )


def pool_cbr(cin, cout):
    """3x3 stride-1 average pool over real pixels (.0), then a 1x1 CBR (.1)."""
    return nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), cbr(cin, cout, 1))


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = cbr(1, 32, 3)
        self.c2 = cbr(32, 64, 3, 2)

    def forward(self, x):
        return self.c2(self.c1(x))


class IncA(nn.Module):
    def __init__(self):
        super().__init__()
        self.b1 = cbr(64, 16, 1)
        self.b2 = nn.Sequential(cbr(64, 16, 1), cbr(16, 16, 3))
        self.b3 = nn.Sequential(cbr(64, 16, 1), cbr(16, 16, 3), cbr(16, 16, 3))
        self.b4 = pool_cbr(64, 16)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class Red(nn.Module):
    def __init__(self):
        super().__init__()
        self.b1 = cbr(64, 64, 3, 2)
        self.b2 = nn.Sequential(cbr(64, 32, 1), cbr(32, 48, 3), cbr(48, 48, 3, 2))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.pool(x)], 1)


class IncB(nn.Module):
    def __init__(self):
        super().__init__()
        self.b1 = cbr(176, 48, 1)
        self.b2 = nn.Sequential(cbr(176, 32, 1), cbr(32, 32, (1, 7)), cbr(32, 48, (7, 1)))
        self.b3 = nn.Sequential(cbr(176, 32, 1), cbr(32, 32, (7, 1)), cbr(32, 32, (1, 7)),
                                cbr(32, 32, (7, 1)), cbr(32, 48, (1, 7)))
        self.b4 = pool_cbr(176, 32)

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class ResA(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.b1 = cbr(64, 16, 1)
        self.b2 = nn.Sequential(cbr(64, 16, 1), cbr(16, 16, 3))
        self.b3 = nn.Sequential(cbr(64, 16, 1), cbr(16, 24, 3), cbr(24, 32, 3))
        self.up = nn.Conv2d(64, 64, 1)

    def forward(self, x):
        up = self.up(torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1))
        return torch.relu(x + self.scale * up)


class ResB(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.b1 = cbr(176, 48, 1)
        self.b2 = nn.Sequential(cbr(176, 32, 1), cbr(32, 40, (1, 7)), cbr(40, 48, (7, 1)))
        self.up = nn.Conv2d(96, 176, 1)

    def forward(self, x):
        up = self.up(torch.cat([self.b1(x), self.b2(x)], 1))
        return torch.relu(x + self.scale * up)


class Mini(nn.Module):
    """inc (residual=False) or res (residual=True): stem, 3 A blocks,
    reduction, 3 B blocks, global average pool, linear 176 -> 10 (the
    classifier's dropout is p = 0 and has no tensors)."""

    def __init__(self, residual, scale=0.2):
        super().__init__()
        self.stem = Stem()
        self.A = nn.Sequential(*[ResA(scale) if residual else IncA() for _ in range(3)])
        self.red = Red()
        self.B = nn.Sequential(*[ResB(scale) if residual else IncB() for _ in range(3)])
        self.fc = nn.Linear(176, 10)

    def forward(self, x):
        x = self.B(self.red(self.A(self.stem(x))))
        return self.fc(torch.flatten(x.mean((2, 3)), 1))


def net(name):
    if name in ("inception_v4", "v4"):
        sys.dont_write_bytecode = True  # no __pycache__ in the source tree
        from torch_inception_v4 import InceptionV4
        return InceptionV4()
    if name in ("inc", "mini_inception"):
        return Mini(residual=False)
    if name in ("res", "mini_inception_resnet"):
        return Mini(residual=True)
    raise SystemExit(f"unknown network {name!r}: inc (mini_inception), res (mini_inception_resnet) or inception_v4")


def read_safetensors(path):
    """Reads an all-F32 safetensors file (8-byte little-endian header length,
    JSON header, data) into numpy arrays."""
    with open(path, "rb") as f:
        b = f.read()
    (n,) = struct.unpack("<Q", b[:8])
    header = json.loads(b[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        if v["dtype"] != "F32":
            raise SystemExit(f"{path}: {k} is {v['dtype']}, want F32")
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype="<f4").reshape(v["shape"])
    return out


def read_idx(path):
    with gzip.open(path, "rb") as f:
        b = f.read()
    dims = b[3]
    shape = struct.unpack(">" + "I" * dims, b[4:4 + 4 * dims])
    return np.frombuffer(b[4 + 4 * dims:], dtype=np.uint8).reshape(shape)


def recipe(model):
    opt = torch.optim.RMSprop(model.parameters(), lr=0.045, alpha=0.9, eps=1.0, momentum=0.9)
    return opt, nn.CrossEntropyLoss(label_smoothing=0.1)


def check_fixtures(d):
    """Verifies the mirror against the training fixtures; exits 1 on a mismatch."""
    index = json.load(open(os.path.join(d, "index.json")))
    xs = np.load(os.path.join(d, "batches_x.npy"))
    ys = np.load(os.path.join(d, "batches_y.npy"))
    bad = 0
    for m in ("inc", "res"):
        model = net(m).double()
        want = [line.split("\t")[:2] for line in open(os.path.join(d, m + ".state_dict.tsv")).read().splitlines()[1:]]
        got = [[k, str(list(v.shape))] for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
        if got != want:
            diff = next(i for i in range(min(len(got), len(want)) + 1) if i >= len(got) or i >= len(want) or got[i] != want[i])
            print(f"{m}: state_dict differs from {m}.state_dict.tsv at entry {diff}: "
                  f"{got[diff] if diff < len(got) else None} vs {want[diff] if diff < len(want) else None}")
            bad += 1
            continue
        init = {k: torch.from_numpy(v.astype(np.float64)) for k, v in read_safetensors(os.path.join(d, m + ".init.safetensors")).items()}
        missing, unexpected = model.load_state_dict(init, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            print(f"{m}: init weights: missing {missing}, unexpected {unexpected}")
            bad += 1
            continue
        model.train()
        opt, lossf = recipe(model)
        losses = []
        for k in range(xs.shape[0]):
            opt.zero_grad()
            loss = lossf(model(torch.from_numpy(xs[k].astype(np.float64))), torch.from_numpy(ys[k]))
            loss.backward()
            opt.step()
            losses.append(loss.item())
        ref = index["models"][m]["losses_f64"]
        err = max(abs(a - b) / abs(b) for a, b in zip(losses, ref))
        ok = err <= 1e-9
        bad += not ok
        print(f"{m}: {len(got)} tensors match {m}.state_dict.tsv; float64 losses {['%.10f' % v for v in losses]} "
              f"vs fixture {['%.10f' % v for v in ref]}: max rel err {err:.2g} {'ok' if ok else 'MISMATCH'}")
    if bad:
        sys.exit(1)


def status_mib(key):
    """Field key of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0


def rss_mib():
    """The current resident set (VmRSS) in MiB."""
    return status_mib("VmRSS")


def check_names(tsv):
    """Compares InceptionV4's state_dict (keys, shapes, order) with timm's,
    as listed in TSV (key, shape); exits 1 at the first difference."""
    want = [line.split("\t")[:2] for line in open(tsv).read().splitlines()[1:]]
    got = [[k, str(list(v.shape)).replace(" ", "")] for k, v in net("inception_v4").state_dict().items()]
    for i in range(max(len(got), len(want))):
        g = got[i] if i < len(got) else None
        w = want[i] if i < len(want) else None
        if g != w:
            raise SystemExit(f"inception_v4: state_dict entry {i} is {g}, {tsv} has {w}")
    n = sum(v.numel() for v in net("inception_v4").parameters())
    print(f"inception_v4: {len(got)} state_dict entries match {tsv}; {n} parameters")


def bench(a):
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    model = net(a.net)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    model.train()
    opt, lossf = recipe(model)
    if a.net in ("inception_v4", "v4"):
        # One fixed synthetic batch, reused every step, as bench/train/kilnstep
        # does: uniform [-1, 1) images of --input, labels i mod 1000.
        c, h, w = (int(v) for v in a.input.split("x"))
        x = (torch.rand(a.batch, c, h, w) * 2 - 1).contiguous(memory_format=fmt)
        y = torch.arange(a.batch, dtype=torch.int64) % 1000
        batches = [(x, y)] * (a.warmup + a.steps)
    else:
        images = read_idx(os.path.join(a.data, "train-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(a.data, "train-labels-idx1-ubyte.gz"))
        need = (a.warmup + a.steps) * a.batch
        idx = np.arange(need) % len(images)
        x_all = torch.from_numpy(((images[idx].astype(np.float32) / 255 - MEAN) / STD)[:, None])
        y_all = torch.from_numpy(labels[idx].astype(np.int64))
        batches = [(x_all[i * a.batch:(i + 1) * a.batch].contiguous(memory_format=fmt), y_all[i * a.batch:(i + 1) * a.batch])
                   for i in range(a.warmup + a.steps)]

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def reset_peak():
        # Restart VmHWM (proc(5), /proc/self/clear_refs; ru_maxrss is not
        # reset) so that step_peak_rss_mib is the peak of the steps after the
        # first, as bench/train/kilnstep measures it after its compile.
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    reset = a.warmup == 0 and reset_peak()
    for i, (x, y) in enumerate(batches[:a.warmup]):
        step(x, y)
        if i == 0:
            reset = reset_peak()
    t0 = time.perf_counter()
    times = []
    for x, y in batches[a.warmup:]:
        t = time.perf_counter()
        loss = step(x, y)
        times.append(time.perf_counter() - t)
    loss = loss.item()
    sec = time.perf_counter() - t0
    print(json.dumps({
        "framework": "pytorch", "torch": torch.__version__, "net": a.net, "batch": a.batch, "threads": a.threads,
        "channels_last": a.channels_last, "steps": a.steps, "warmup": a.warmup, "seconds": round(sec, 4),
        "img_per_s": round(a.steps * a.batch / sec, 2), "step_s": [round(t, 4) for t in times], "last_loss": round(loss, 5),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "rss_mib": rss_mib(),
        "step_peak_rss_mib": status_mib("VmHWM") if reset else -1,
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="inc", help="inc (mini_inception) or res (mini_inception_resnet)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=FASHION, help="directory of Fashion-MNIST's gzipped IDX files")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--input", default="3x299x299", help="per-sample input CxHxW of inception_v4's synthetic batch")
    p.add_argument("--check-names", metavar="TSV", help="compare inception_v4's state_dict keys and shapes with TSV "
                   "(../shared/timm_state_dict_inception_v4.tsv) and exit")
    p.add_argument("--check-fixtures", metavar="DIR", help="verify the networks against the training fixtures in DIR and exit")
    a = p.parse_args()
    if a.check_fixtures:
        check_fixtures(a.check_fixtures)
        return
    if a.check_names:
        check_names(a.check_names)
        return
    if a.batch <= 0 or a.steps <= 0 or a.warmup < 0 or a.threads <= 0:
        raise SystemExit("--batch, --steps and --threads must be positive, --warmup not negative")
    bench(a)


if __name__ == "__main__":
    main()
