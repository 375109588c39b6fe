"""CIFAR ResNets (He et al. 2016): resnet20 / 32 / 56 (3 stages of n BasicBlocks, 16-32-64 channels) and
a 32x32-input resnet18 (4 stages of 2 blocks, 64-512 channels, a 3x3 stem without max-pool).

Where a block changes the shape (stride 2 or more channels), its shortcut is a 1x1 conv + BatchNorm
(option B), named `downsample` as in torchvision, so Torch-Pruning's dependency graph couples the
residual sum's two inputs; every other block adds its input unchanged. Stages are `nn.Sequential`s
of blocks (`layer1`, `layer2`, ...), which depth pruning (prune.method depth) shortens.

Each takes `num_classes` and `input_shape` (C, H, W); any H, W work (global average pooling).
At 32x32: resnet20 0.27 M parameters, 41.4 M MACs (as Torch-Pruning counts them).
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import MODELS


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                           if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """Stem conv3x3-BN-ReLU, stages `layer1..layerK` of BasicBlocks (stride 2 from the second), pool, classifier."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], depths: tuple[int, ...],
                 widths: tuple[int, ...]) -> None:
        super().__init__()
        if len(depths) != len(widths) or any(d < 1 for d in depths) or any(w < 1 for w in widths):
            raise ValueError(f"depths {list(depths)} and widths {list(widths)} must be positive and of equal length")
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c = widths[0]
        for i, (d, w) in enumerate(zip(depths, widths)):
            blocks = [BasicBlock(c, w, 1 if i == 0 else 2)] + [BasicBlock(w, w) for _ in range(d - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c = w
        self.stages = len(depths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.classifier(torch.flatten(self.pool(x), 1))


def _cifar(n: int, doc: str):
    def factory(num_classes: int, input_shape: tuple[int, ...], widths: tuple[int, int, int] = (16, 32, 64)) -> CifarResNet:
        return CifarResNet(num_classes, input_shape, (n, n, n), tuple(widths))

    factory.__doc__ = doc
    return factory


MODELS.register("resnet20")(_cifar(3, "CIFAR ResNet-20: 3 stages of 3 BasicBlocks, 16/32/64 channels (0.27 M parameters)"))
MODELS.register("resnet32")(_cifar(5, "CIFAR ResNet-32: 3 stages of 5 BasicBlocks, 16/32/64 channels (0.46 M parameters)"))
MODELS.register("resnet56")(_cifar(9, "CIFAR ResNet-56: 3 stages of 9 BasicBlocks, 16/32/64 channels (0.85 M parameters)"))


@MODELS.register("resnet18")
def resnet18(num_classes: int, input_shape: tuple[int, ...], widths: tuple[int, ...] = (64, 128, 256, 512)) -> CifarResNet:
    """ResNet-18 for 32x32 inputs: 3x3 stem without max-pool, 4 stages of 2 BasicBlocks, 64-512 channels (11.2 M)."""
    return CifarResNet(num_classes, input_shape, (2, 2, 2, 2), tuple(widths))
