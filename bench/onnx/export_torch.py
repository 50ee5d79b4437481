#!/usr/bin/env python3
"""Writes ONNX files with PyTorch's own exporter (torch.onnx.export), an
independent tool, for Kiln's ONNX import tests and benchmark.

    python3 bench/onnx/export_torch.py --out tests/onnx            # committed files
    python3 bench/onnx/export_torch.py --full --out bench/onnx/work # ResNet-50, MobileNet-v2

Without --full it writes two reduced-width models with seeded random weights,
in eval mode, opset 13, small enough to commit:

* resnet_mini: a CIFAR-style ResNet (He et al., arXiv:1512.03385) with
  torchvision's BasicBlock: 3x3 convs, BatchNorm, ReLU, projection shortcuts
  (1x1 conv + BN) where the width or stride changes, global average pool,
  torch.flatten, fc.
* mobilenet_v2_mini: MobileNet-v2 (Sandler et al., arXiv:1801.04381):
  inverted residuals (1x1 expand, depthwise 3x3, 1x1 linear projection) with
  BatchNorm and ReLU6, identity shortcuts when shape is kept, a 1x1 head,
  global average pool, x.reshape(x.size(0), -1) (a Shape/Gather/Reshape chain
  in the exported graph), dropout, fc.

Both have a symbolic batch dimension N. Each NAME.onnx comes with
NAME.input.npy (seeded normal input, batch 2, 3x32x32) and NAME.torch.npy (PyTorch's output on it). BatchNorm statistics
and affine parameters are randomised too, so that folding them is tested.

With --full it writes torchvision's resnet50() and mobilenet_v2() with random
weights (weights=None, seeded; BN statistics randomised) at 3x224x224 with a
symbolic batch dimension, for bench/onnx/run.sh; these are not committed.
"""
import argparse
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, k, stride=1, groups=1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock with a projection shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idn = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idn)


class ResNetMini(nn.Module):
    def __init__(self, widths=(16, 32, 64), classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class InvertedResidual(nn.Module):
    """torchvision.models.mobilenetv2.InvertedResidual."""

    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers += [conv_bn(cin, hidden, 1), nn.ReLU6()]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(), conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res else y


class MobileNetV2Mini(nn.Module):
    # (expansion t, channels c, repeats n, stride s) as in the paper's Table 2
    cfg = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 2, 2), (6, 24, 1, 1)]

    def __init__(self, classes=10):
        super().__init__()
        layers = [conv_bn(3, 16, 3, 1), nn.ReLU6()]
        cin = 16
        for t, c, n, s in self.cfg:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [conv_bn(cin, 64, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        x = x.reshape(x.size(0), -1)
        return self.fc(self.dropout(x))


def randomize(model, seed):
    """Seeded random weights, BatchNorm statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
    return model.eval()


def export(model, name, out, shape, batch):
    path = os.path.join(out, name + ".onnx")
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((batch,) + shape).astype(np.float32))
    # A symbolic batch: the exporter then writes x.reshape(x.size(0), -1) as
    # a Shape/Gather/Unsqueeze/Concat/Reshape chain, as in deployed models.
    kwargs = {"dynamic_axes": {"input": {0: "N"}, "logits": {0: "N"}}}
    with torch.no_grad():
        torch.onnx.export(model, x, path, opset_version=13, input_names=["input"],
                          output_names=["logits"], do_constant_folding=True, **kwargs)
        y = model(x)
    np.save(os.path.join(out, name + ".input.npy"), x.numpy())
    np.save(os.path.join(out, name + ".torch.npy"), y.numpy())
    print(f"wrote {path} ({os.path.getsize(path)} bytes), {name}.input.npy, {name}.torch.npy")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="directory to write into")
    ap.add_argument("--full", action="store_true", help="torchvision ResNet-50 and MobileNet-v2 (3x224x224) instead")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    if args.full:
        import torchvision.models as tvm
        export(randomize(tvm.resnet50(), 50), "resnet50", args.out, (3, 224, 224), 1)
        export(randomize(tvm.mobilenet_v2(), 2), "mobilenet_v2", args.out, (3, 224, 224), 1)
        return
    export(randomize(ResNetMini(), 1), "resnet_mini", args.out, (3, 32, 32), 2)
    export(randomize(MobileNetV2Mini(), 2), "mobilenet_v2_mini", args.out, (3, 32, 32), 2)


if __name__ == "__main__":
    main()
