r"""python -m train.main --config=train/configs/linear_probe.py --workdir=/tmp/probe

A linear probe: the pretrained backbone and its BatchNorm statistics are frozen and only
a freshly initialised head is trained (SGD with momentum, cosine decay, no weight decay
or label smoothing, the base config's augmentation). Frozen parameters carry no
optimizer state and their gradients are never used, so a step costs about a forward pass.

It is a preset over a fine-tuning config, named after the colon:

    --config=train/configs/linear_probe.py                             # torchvision ResNet-50 on tf_flowers
    --config=train/configs/linear_probe.py:finetune_cifar \
        --config.data_dir=DIR --config.init_from=SRC                   # a CIFAR backbone on new classes

Every field stays overridable, e.g. `--config.learning_rate=0.3`.
"""

import importlib

BASES = ("finetune_imagenet_resnet50", "finetune_cifar")


def get_config(base: str = "finetune_imagenet_resnet50"):
    if base not in BASES:
        raise ValueError(f"linear_probe.py:{base}: unknown base config; valid: {', '.join(BASES)}")
    config = importlib.import_module(f"train.configs.{base}").get_config()
    config.freeze = "backbone"
    config.freeze_batch_stats = True
    config.reinit_head = True
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.lr_base_batch_size = 0
    config.head_lr_multiplier = 1.0
    config.lr_schedule = "cosine"
    config.lr_boundaries = ()
    config.lr_boundary_epochs = ()
    config.warmup_epochs = 0.0
    config.weight_decay = 0.0
    config.label_smoothing = 0.0
    return config
