r"""python -m train.main --config=train/configs/cifar10.py --workdir=/tmp/cifar10 --config.model=resnet20

He et al. 2016 §4.2, exactly: batch 128, SGD with momentum 0.9 and weight decay 1e-4,
lr 0.1 divided by 10 at 32k and 48k iterations, stopping at 64k; 4-pixel zero padding,
a random 32x32 crop and a horizontal flip; per-channel normalisation. The depth is
`--config.model=resnet20|32|44|56|110` (the paper's test errors: 8.75, 7.51, 7.17,
6.97, 6.43%). `--config.validation_examples=5000` gives the paper's 45k/5k split.
(For resnet110 the paper warms up at lr 0.01 until training error is below 80%, about
400 iterations: `--config.warmup_epochs=1`.)

The same recipe on the JPEG CIFAR-10 in an image folder:
`--config.dataset=image_folder --config.data_dir=ROOT`.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "cifar10"
    config.model = "resnet20"
    config.augment = "cifar"
    config.crop_padding = 4
    config.mean = (0.4914, 0.4822, 0.4465)
    config.std = (0.2470, 0.2435, 0.2616)
    config.batch_size = 128
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.weight_decay = 1e-4
    config.lr_schedule = "piecewise"
    config.warmup_epochs = 0.0
    config.lr_boundaries = (32_000, 48_000)
    config.lr_decay_factor = 0.1
    config.num_train_steps = 64_000
    config.log_every_steps = 100
    config.eval_every_steps = 2_000
    config.checkpoint_every_steps = 2_000
    return config
