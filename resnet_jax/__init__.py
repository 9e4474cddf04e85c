"""resnet_jax: ResNet families as pure-functional Flax Linen modules.

>>> import jax, jax.numpy as jnp, resnet_jax
>>> model = resnet_jax.create_model('resnet18', num_classes=10)
>>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
>>> model.apply(variables, jnp.zeros((2, 32, 32, 3))).shape
(2, 10)

Classify images with pretrained, converted or trained weights in one call:

>>> resnet_jax.classify("dog.jpg", weights="resnet50.torchvision_v2")  # doctest: +SKIP
[(name, probability), ...]

and measure them on labelled images (a folder of class folders, or a TFDS split):

>>> resnet_jax.evaluate_weights("resnet50.torchvision_v2", "imagenet/val")  # doctest: +SKIP
{'top1': ..., 'top5': ..., 'loss': ..., 'images': 50000, ...}
"""

from resnet_jax import convert, nnx_bridge, xla
from resnet_jax.blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from resnet_jax.classes import imagenet_classes
from resnet_jax.classifier import Classifier, classify
from resnet_jax.evaluation import evaluate_weights
from resnet_jax.nnx_bridge import to_nnx
from resnet_jax.preprocessing import Preprocessing
from resnet_jax.pretrained import create_model
from resnet_jax.registry import list_models
from resnet_jax.resnet import BatchNorm, FrozenBatchNorm, ResNet

__version__ = "0.1.0"

__all__ = [
    "BasicBlock",
    "BatchNorm",
    "Bottleneck",
    "Classifier",
    "FrozenBatchNorm",
    "PreActBasicBlock",
    "PreActBottleneck",
    "Preprocessing",
    "ResNet",
    "classify",
    "convert",
    "create_model",
    "evaluate_weights",
    "imagenet_classes",
    "list_models",
    "nnx_bridge",
    "to_nnx",
    "xla",
]
