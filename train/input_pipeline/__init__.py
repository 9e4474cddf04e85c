"""The input pipeline, on grain: sources, augmentations, and the batched, sharded,
checkpointable streams. No TensorFlow: images decode and augment in numpy (simplejpeg,
PIL, OpenCV), and TFDS datasets are read from their ArrayRecord files.

- ``sources``: digits, image folders and TFDS datasets as random-access sources;
- ``augment``: decoding, the CIFAR and ImageNet crops of one image, and the
  augmentation fields of the config;
- ``policies``: TrivialAugmentWide, AutoAugment and RandAugment; ``erasing``: random
  erasing;
- ``batching``: the train stream and eval batches (order, sharding, batching).
"""

from train.input_pipeline.augment import AUGMENTATIONS
from train.input_pipeline.batching import Data, create_data
from train.input_pipeline.sources import BUILTIN_DATASETS, Source, create_source

__all__ = ["AUGMENTATIONS", "BUILTIN_DATASETS", "Data", "Source", "create_data", "create_source"]
