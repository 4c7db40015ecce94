"""Pre-activation ResNet18 with a width parameter and optional BatchNorm (Humayun et al.'s CIFAR-10
model; after kuangliu/pytorch-cifar's ``preact_resnet.py``, as in their ``models.make_resnet18k``).

When BatchNorm is off its places hold ``nn.Identity`` modules, so the pre-activation tensors keep the
same module names (``layerL.B.bn1`` / ``bn2``: Humayun's local-complexity hooks read their outputs).
Every ReLU is its own module instance (``act1`` / ``act2`` in each block).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import activation


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class PreActBlock(nn.Module):
    """``out = conv2(act2(bn2(conv1(act1(bn1(x)))))) + shortcut``, where the shortcut is ``x`` or, when
    the shape changes, a 1x1 strided convolution of ``act1(bn1(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, batchnorm: bool = False,
                 activation_name: str = "relu"):
        super().__init__()
        self.bn1 = _norm(in_planes, batchnorm)
        self.act1 = activation(activation_name)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _norm(planes, batchnorm)
        self.act2 = activation(activation_name)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(self.act2(self.bn2(self.conv1(out))))
        return out + skip


class PreActResNet(nn.Module):
    """Stem conv → 4 stages of pre-activation blocks (widths ``w, 2w, 4w, 8w``; stages 2-4 stride 2) →
    global average pooling → linear. Input ``(n, C, H, W)`` → logits ``(n, n_classes)``."""

    def __init__(self, num_blocks: tuple[int, ...] = (2, 2, 2, 2), in_channels: int = 3, n_classes: int = 10,
                 width: int = 16, batchnorm: bool = False, activation_name: str = "relu"):
        super().__init__()
        if width < 1:
            raise ValueError(f"preact_resnet18 needs width >= 1, got {width}")
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        planes_in = width
        stages = []
        for i, n in enumerate(num_blocks):
            planes = width * 2 ** i
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(PreActBlock(planes_in, planes, stride, batchnorm, activation_name))
                planes_in = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        # kuangliu's avg_pool2d(out, 4) on the 4x4 map of a 32x32 input; global pooling elsewhere.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(planes_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(self.flatten(self.pool(out)))


def preact_resnet18(in_channels: int = 3, n_classes: int = 10, width: int = 16, batchnorm: bool = False,
                    activation_name: str = "relu") -> PreActResNet:
    """Pre-activation ResNet18 ``(2, 2, 2, 2)`` blocks with base width ``width`` (64 = the standard
    ResNet18; Humayun et al. use 16, no BatchNorm)."""
    return PreActResNet((2, 2, 2, 2), in_channels, n_classes, width, batchnorm, activation_name)
