"""Convolutional networks: a small generic CNN and GrokAlign's CIFAR-10 CNN (6 conv + 2 linear).

Every nonlinearity is its own module instance (probes hook activation modules per layer).
"""

from __future__ import annotations

from torch import nn

from .layers import activation, scale_init_


def _downsampled(size: int, n: int) -> int:
    """Spatial size after ``n`` 3x3 convolutions with stride 2 and padding 1: ``ceil(size / 2)`` each."""
    for _ in range(n):
        size = (size - 1) // 2 + 1
    return size


def cnn(in_channels: int = 1, n_classes: int = 10, image_size: int = 8, channels: tuple[int, ...] = (16, 32),
        activation_name: str = "relu", bias: bool = True, init_scale: float = 1.0) -> nn.Sequential:
    """``[Conv3x3(stride 2, padding 1) → act] per entry of channels → Flatten → Linear(n_classes)``.

    Input ``(n, in_channels, image_size, image_size)``, output logits ``(n, n_classes)``. Each block
    halves the spatial size (rounding up), so the linear layer sees
    ``channels[-1] * s * s`` features with ``s = ceil(image_size / 2**len(channels))``.
    ``init_scale`` multiplies every initial parameter (as in :func:`grokscope.models.mlp.mlp`).
    """
    channels = tuple(int(c) for c in channels)
    if not channels or min(channels) < 1 or image_size < 1:
        raise ValueError(f"cnn needs at least one positive channel count and image_size >= 1, "
                         f"got channels={channels}, image_size={image_size}")
    layers: list[nn.Module] = []
    c_in = in_channels
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=bias), activation(activation_name)]
        c_in = c
    s = _downsampled(image_size, len(channels))
    layers += [nn.Flatten(), nn.Linear(c_in * s * s, n_classes, bias=bias)]
    return scale_init_(nn.Sequential(*layers), init_scale)


def grokalign_cnn(in_channels: int = 3, n_classes: int = 10, image_size: int = 32, bias: bool = False,
                  init_scale: float = 1.0, width: int = 32) -> nn.Sequential:
    """GrokAlign's delayed-robustness CNN (``delayed_robustness.py``), input ``(n, C, S, S)`` → ``(n, n_classes)``.

    Six 3x3 convolutions (padding 1) with ``width·(1, 1, 2, 2, 4, 4)`` filters (32, 32, 64, 64, 128,
    128), stride 2 on the 2nd, 4th and 6th, each followed by its own ReLU; global average pooling
    (the original's two ``AvgPool2d(2, 2)`` on the 4x4 map of a 32x32 input, identical there);
    ``Linear(4·width, 128) → ReLU → Linear(128, n_classes)``. No biases by default; weights
    Kaiming-normal (fan-out, ReLU gain), biases (if on) zero, then all multiplied by ``init_scale``.
    """
    if image_size < 1 or width < 1:
        raise ValueError(f"grokalign_cnn needs image_size >= 1 and width >= 1, got {image_size}, {width}")
    filters = [width, width, 2 * width, 2 * width, 4 * width, 4 * width]
    layers: list[nn.Module] = []
    c_in = in_channels
    for i, c in enumerate(filters):
        layers += [nn.Conv2d(c_in, c, 3, stride=2 if i % 2 else 1, padding=1, bias=bias), activation("relu")]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(c_in, 128, bias=bias), activation("relu"), nn.Linear(128, n_classes, bias=bias)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return scale_init_(model, init_scale)
