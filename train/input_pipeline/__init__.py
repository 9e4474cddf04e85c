"""The input pipeline, on grain: datasets, augmentations, and the batched, sharded,
checkpointable streams. No TensorFlow: images decode and augment in numpy (simplejpeg,
PIL, OpenCV), and TFDS datasets are read from their ArrayRecord files.

- ``datasets``: digits, image folders and TFDS datasets as random-access sources;
- ``folders``: an image folder's listing, read once and kept (no pixels read at start-up);
- ``undecodable``: images that fail to decode when read, skipped deterministically and
  counted;
- ``augment``: the CIFAR and ImageNet crops of one image (``Crop``);
- ``policies``: TrivialAugmentWide, AutoAugment and RandAugment; ``erasing``: random
  erasing;
- ``batching``: the train stream and eval batches (order, sharding, batching):
  ``batching.create_data(train.settings.data(config))``.

Each name is imported from the module that defines it.
"""
