"""torch and torchvision for the parity tests, or a skip without them.

Only torchvision's pure-Python code is used: its compiled ops do not load with the CPU
torch build, and they load only when ``torchvision._meta_registrations`` is stubbed first.
"""

import sys
import types

import pytest

torch = pytest.importorskip("torch")
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
torchvision = pytest.importorskip("torchvision")
tv_models = pytest.importorskip("torchvision.models")


def randomize(module, seed, images=None):
    """Random BN affine parameters and head bias, then BN running statistics measured on
    random images, or on ``images`` (so they are non-trivial and the logits depend on the
    input), eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        module.train()
        for _ in range(2 if images is None else 1):
            module(torch.randn(8, 3, 64, 64, generator=gen) if images is None else images)
    return module.eval()
