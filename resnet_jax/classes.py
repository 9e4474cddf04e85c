"""Class names: ImageNet-1k's, shipped with the package, and a fallback for the rest.

``imagenet1k_classes.txt`` beside this module lists the 1,000 classes in the index order
of every ImageNet-1k model: torchvision's names (``weights.meta['categories']``) and
their WordNet ids, each with its source named in the file's header.
"""

from __future__ import annotations

import functools
import os

_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet1k_classes.txt")


@functools.cache
def _imagenet1k() -> tuple[tuple[str, ...], tuple[str, ...]]:
    with open(_FILE, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if not line.startswith("#")]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names, by class index ('tench', 'goldfish', ...)."""
    return list(_imagenet1k()[1])


def imagenet_wnids() -> list[str]:
    """The WordNet ids of the same classes ('n01440764', ...)."""
    return list(_imagenet1k()[0])


def numbered(num_classes: int) -> list[str]:
    """'0', '1', ...: the names of classes nobody named."""
    return [str(i) for i in range(num_classes)]
