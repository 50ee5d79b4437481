#!/usr/bin/env python3
"""Float64 reference for tests/train_full_test.go (issue 9): one RMSProp
training step of Inception-v4 or Inception-ResNet-v2 in PyTorch float64.

The two networks are written out here with timm's module names (timm
v0.9.16, models/inception_v4.py and models/inception_resnet_v2.py; the same
names as archs/inception_v4.kiln and archs/inception_resnet_v2.kiln and as
../shared/timm_state_dict_*.tsv), since timm itself is not installed. The
state is loaded with strict key and shape checking, so a name or shape that
differs from Kiln's graph is an error, not a silent mismatch.

Usage: train_full_ref.py --net NET --dir D [--dtype float64|float32]
Reads D/init.safetensors (F32: every param, BatchNorm buffer), D/x.npy
(float32 N,C,H,W) and D/y.npy (int64 N). Runs one step of the issue-9 recipe
(training-mode forward, BatchNorm momentum 0.1, cross-entropy with label
smoothing 0.1, torch.optim.RMSprop(lr=0.045, alpha=0.9, eps=1.0,
momentum=0.9), the paper's optimizer in PyTorch's form: train.PaperRMSProp)
in the given dtype, the float32 inputs widened exactly. Writes
D/ref_<dtype>.safetensors (F64 for float64, F32 for float32) holding every
param, running_mean, running_var and optim.<param>.square_avg /
momentum_buffer after the step (Kiln's names) and D/ref_<dtype>.json with
the loss. With --compare F (a float32 run's ref_float32.safetensors) the
json also holds "errors": per tensor ||a_F - a||_2, computed in float64.
The test runs float32 first, then float64 with --compare.

Needs python3-torch (PyTorch 1.13 in Debian) and numpy; no other package.
"""
import argparse
import json
import os
import struct
import sys
import time

import numpy as np
import torch
from torch import nn

# Inception-v4 and timm's BasicConv2d (conv, BatchNorm eps 1e-3, in-place
# ReLU) come from the peer benchmark's definition, so the two never drift
# apart; make peers-train-smoke checks its state_dict against timm's.
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "train"))
from torch_inception_v4 import BasicConv2d, InceptionV4  # noqa: E402


def avgpool():
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


# ---------------------------------------------------------- Inception-ResNet-v2

class Mixed5b(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(192, 96, 1)
        self.branch1 = nn.Sequential(BasicConv2d(192, 48, 1), BasicConv2d(48, 64, 5, padding=2))
        self.branch2 = nn.Sequential(BasicConv2d(192, 64, 1), BasicConv2d(64, 96, 3, padding=1),
                                     BasicConv2d(96, 96, 3, padding=1))
        self.branch3 = nn.Sequential(avgpool(), BasicConv2d(192, 64, 1))

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class Block35(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(320, 32, 1)
        self.branch1 = nn.Sequential(BasicConv2d(320, 32, 1), BasicConv2d(32, 32, 3, padding=1))
        self.branch2 = nn.Sequential(BasicConv2d(320, 32, 1), BasicConv2d(32, 48, 3, padding=1),
                                     BasicConv2d(48, 64, 3, padding=1))
        self.conv2d = nn.Conv2d(128, 320, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1))
        return self.act(out * self.scale + x)


class Mixed6a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(320, 384, 3, stride=2)
        self.branch1 = nn.Sequential(BasicConv2d(320, 256, 1), BasicConv2d(256, 256, 3, padding=1),
                                     BasicConv2d(256, 384, 3, stride=2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Block17(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(1088, 192, 1)
        self.branch1 = nn.Sequential(BasicConv2d(1088, 128, 1), BasicConv2d(128, 160, (1, 7), padding=(0, 3)),
                                     BasicConv2d(160, 192, (7, 1), padding=(3, 0)))
        self.conv2d = nn.Conv2d(384, 1088, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x)), 1))
        return self.act(out * self.scale + x)


class Mixed7a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 384, 3, stride=2))
        self.branch1 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, stride=2))
        self.branch2 = nn.Sequential(BasicConv2d(1088, 256, 1), BasicConv2d(256, 288, 3, padding=1),
                                     BasicConv2d(288, 320, 3, stride=2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class Block8(nn.Module):
    def __init__(self, scale, no_relu=False):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(2080, 192, 1)
        self.branch1 = nn.Sequential(BasicConv2d(2080, 192, 1), BasicConv2d(192, 224, (1, 3), padding=(0, 1)),
                                     BasicConv2d(224, 256, (3, 1), padding=(1, 0)))
        self.conv2d = nn.Conv2d(448, 2080, 1)
        self.relu = None if no_relu else nn.ReLU()

    def forward(self, x):
        out = self.conv2d(torch.cat((self.branch0(x), self.branch1(x)), 1)) * self.scale + x
        return out if self.relu is None else self.relu(out)


class InceptionResnetV2(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed5b()
        self.repeat = nn.Sequential(*[Block35(0.17) for _ in range(10)])
        self.mixed_6a = Mixed6a()
        self.repeat_1 = nn.Sequential(*[Block17(0.10) for _ in range(20)])
        self.mixed_7a = Mixed7a()
        self.repeat_2 = nn.Sequential(*[Block8(0.20) for _ in range(9)])
        self.block8 = Block8(1.0, no_relu=True)
        self.conv2d_7b = BasicConv2d(2080, 1536, 1)
        self.classif = nn.Linear(1536, classes)

    def forward(self, x):
        for m in (self.conv2d_1a, self.conv2d_2a, self.conv2d_2b, self.maxpool_3a, self.conv2d_3b,
                  self.conv2d_4a, self.maxpool_5a, self.mixed_5b, self.repeat, self.mixed_6a,
                  self.repeat_1, self.mixed_7a, self.repeat_2, self.block8, self.conv2d_7b):
            x = m(x)
        return self.classif(x.mean((2, 3)))


NETS = {"inception_v4": InceptionV4, "inception_resnet_v2": InceptionResnetV2}


def read_safetensors(path):
    with open(path, "rb") as f:
        b = f.read()
    (n,) = struct.unpack("<Q", b[:8])
    header = json.loads(b[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        dt = {"F32": "<f4", "F64": "<f8"}.get(v["dtype"])
        if dt is None:
            raise SystemExit(f"{path}: {k} is {v['dtype']}, want F32 or F64")
        s, e = v["data_offsets"]
        out[k] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=dt).reshape(v["shape"])
    return out


def write_safetensors(path, tensors, f64=True):
    header, off, blobs = {}, 0, []
    for k, a in tensors.items():
        a = np.ascontiguousarray(a, dtype="<f8" if f64 else "<f4")
        header[k] = {"dtype": "F64" if f64 else "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        off += a.nbytes
        blobs.append(a.tobytes())
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for blob in blobs:
            f.write(blob)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", required=True, choices=sorted(NETS))
    ap.add_argument("--dir", required=True)
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare", help="a float32 run's ref_float32.safetensors: write each tensor's "
                    "distance to this run, ||a32 - a||_2, to ref_<dtype>.json's errors")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dt = getattr(torch, a.dtype)
    t0 = time.time()
    model = NETS[a.net]()
    init = read_safetensors(f"{a.dir}/init.safetensors")
    sd = model.state_dict()
    want = {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    got = {k: tuple(v.shape) for k, v in init.items() if not k.startswith("optim.")}
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        bad = sorted(k for k in set(want) & set(got) if want[k] != got[k])[:5]
        raise SystemExit(f"{a.dir}/init.safetensors does not match {a.net}: missing {missing}, extra {extra}, shape {bad}")
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in init.items()
                           if not k.startswith("optim.")}, strict=False)
    model = model.to(dt)
    model.train()
    x = torch.from_numpy(np.load(f"{a.dir}/x.npy")).to(dt)
    y = torch.from_numpy(np.load(f"{a.dir}/y.npy")).long()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.045, alpha=0.9, eps=1.0, momentum=0.9)
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    out = {}
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            out[k] = v.double().numpy()
    for name, p in model.named_parameters():
        st = opt.state[p]
        out[f"optim.{name}.square_avg"] = st["square_avg"].double().numpy()
        out[f"optim.{name}.momentum_buffer"] = st["momentum_buffer"].double().numpy()
    res = {"loss": loss.item(), "seconds": time.time() - t0}
    if a.compare:
        other = read_safetensors(a.compare)
        res["errors"] = {k: float(np.linalg.norm(other[k].astype(np.float64).ravel() - v.ravel())) for k, v in out.items()}
        del other
    write_safetensors(f"{a.dir}/ref_{a.dtype}.safetensors", out, f64=a.dtype == "float64")
    with open(f"{a.dir}/ref_{a.dtype}.json", "w") as f:
        json.dump(res, f)
    print(json.dumps({"net": a.net, "dtype": a.dtype, "loss": loss.item(), "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    sys.exit(main())
