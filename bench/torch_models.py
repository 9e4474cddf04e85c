"""The PyTorch side of the throughput comparison: torchvision's models, and the CIFAR
ResNets of He et al. 2016 (§4.2), which torchvision does not have.

The CIFAR nets mirror ``resnet_jax``'s ``resnet20``..``resnet1202``: a 3x3 stem of 16
channels, three stages of BasicBlocks at 16/32/64 channels, and option A shortcuts
(subsample, then zero channels appended), so their parameter counts are equal.
"""

from __future__ import annotations

import sys
import types
from typing import Any

CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)


def import_torchvision() -> Any:
    """torchvision, also where its compiled ops cannot load (a CUDA wheel beside a CPU torch).

    Only the pure-Python model definitions are used, so the meta registrations of its
    compiled ops (detection ops, none of them in a ResNet) can be skipped when they fail.
    """
    try:
        import torchvision
    except (ImportError, RuntimeError, OSError):
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision
    return torchvision


def cifar_resnet(depth: int, num_classes: int = 10) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    if depth not in CIFAR_DEPTHS:
        raise ValueError(f"depth={depth}: the CIFAR ResNets are {', '.join(map(str, CIFAR_DEPTHS))}")

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
            if self.extra:  # option A: zero channels appended, no parameters
                shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
            return F.relu(y + shortcut)

    class CifarResNet(nn.Module):
        def __init__(self):
            super().__init__()
            n = (depth - 2) // 6
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            blocks, cin = [], 16
            for i, width in enumerate((16, 32, 64)):
                for j in range(n):
                    blocks.append(Block(cin, width, 2 if i > 0 and j == 0 else 1))
                    cin = width
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.blocks(F.relu(self.bn1(self.conv1(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return CifarResNet()


def is_cifar(name: str) -> bool:
    return name in {f"resnet{d}" for d in CIFAR_DEPTHS}


def names() -> list[str]:
    """The resnet_jax names that have a PyTorch model here."""
    models = import_torchvision().models
    tv = [n for n in dir(models) if n.startswith(("resnet", "resnext", "wide_resnet"))]
    return sorted([n for n in tv if callable(getattr(models, n))] + [f"resnet{d}" for d in CIFAR_DEPTHS])


def create(name: str, num_classes: int) -> Any:
    """The PyTorch model of the resnet_jax architecture ``name``."""
    if is_cifar(name):
        return cifar_resnet(int(name[len("resnet") :]), num_classes)
    if name not in names():
        raise ValueError(f"{name!r} has no PyTorch counterpart here; valid: {', '.join(names())}")
    return getattr(import_torchvision().models, name)(num_classes=num_classes)
