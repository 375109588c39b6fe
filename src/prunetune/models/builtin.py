"""Built-in models: LeNet-300-100, LeNet-5 and a small VGG-style CNN.

Each takes `num_classes` and `input_shape` (C, H, W) and names its output layer `classifier`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import MODELS


@MODELS.register("lenet300")
class LeNet300(nn.Module):
    """LeNet-300-100: an MLP 784-300-100-10 (Han et al. 2015)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], hidden: tuple[int, int] = (300, 100), dropout: float = 0.0):
        super().__init__()
        d = math.prod(input_shape)
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(d, hidden[0]), nn.ReLU(), nn.Linear(hidden[0], hidden[1]), nn.ReLU(), nn.Dropout(dropout)
        )
        self.classifier = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@MODELS.register("lenet5")
class LeNet5(nn.Module):
    """LeNet-5: two 5x5 convolutions and three fully connected layers."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0):
        super().__init__()
        c = input_shape[0]
        self.features = nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).shape[1]
        self.head = nn.Sequential(nn.Linear(flat, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.features(x)))


@MODELS.register("small_cnn")
class SmallCNN(nn.Module):
    """VGG-style CNN: three blocks of two conv-BN-ReLU and a max-pool, then a hidden FC layer.

    At 28x28 with the defaults: 1.49 M parameters, 30.3 M MACs.
    """

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, ...],
        widths: tuple[int, ...] = (32, 64, 128),
        hidden: int = 1024,
        dropout: float = 0.3,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c = input_shape[0]
        for w in widths:
            for _ in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2))
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).shape[1]
        self.head = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.features(x)))
