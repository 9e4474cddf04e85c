r"""python -m train.main --config=train/configs/cifar100_wrn28_10.py --workdir=/tmp/wrn

WRN-28-10 on CIFAR-100 (Zagoruyko & Komodakis 2016): batch 128, Nesterov SGD with
momentum 0.9, weight decay 5e-4, lr 0.1 multiplied by 0.2 at epochs 60, 120 and 160,
200 epochs, pad-crop and flip augmentation. The paper's dropout variant puts dropout
between the two convolutions of each block; resnet_jax's `drop_rate` is applied before
the classifier only, so it is left at 0 here.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "cifar100"
    config.model = "wrn28_10"
    config.augment = "cifar"
    config.mean = (0.5071, 0.4865, 0.4409)
    config.std = (0.2673, 0.2564, 0.2762)
    config.batch_size = 128
    config.optimizer = "nesterov"
    config.learning_rate = 0.1
    config.weight_decay = 5e-4
    config.lr_schedule = "piecewise"
    config.warmup_epochs = 0.0
    config.lr_boundary_epochs = (60, 120, 160)
    config.lr_decay_factor = 0.2
    config.num_epochs = 200.0
    config.log_every_steps = 100
    return config
