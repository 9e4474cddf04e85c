r"""python -m train.main --config=train/configs/cifar10_tv2.py --workdir=/tmp/c10tv2

The ingredients of torchvision's IMAGENET1K_V2 recipe (imagenet_resnet50_tv2.py) on a
CIFAR ResNet-20, to try them on a CPU: TrivialAugmentWide, random erasing 0.1, repeated
augmentation x4, mixup 0.2 / cutmix 1.0, label smoothing 0.1, an EMA every 32 steps
with torchvision's adjustment, a linear warmup from 1% then cosine, no decay on
BatchNorm. What changes for CIFAR: He et al.'s pad-and-crop at 32 instead of the resized
crop, SGD at lr 0.1 per 128 images (scaled linearly with --config.batch_size), weight
decay 5e-4 (2e-5 is tuned for 600 ImageNet epochs), a 1-epoch warmup stepped per step,
200 epochs, and an EMA decay of 0.9995: with torchvision's adjustment
an EMA averages over about 1 / ((1 - decay) * N) of the run, and 0.9995 on CIFAR's
N = 50,000 gives V2's 3.9% (0.99998 on ImageNet's 1.28M).

The JPEG CIFAR-10 in an image folder: `--config.dataset=image_folder --config.data_dir=ROOT`.
"""

from train.configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.model = "resnet20"
    config.augment = "cifar"
    config.auto_augment = "trivialaugment"
    config.random_erasing = 0.1
    config.repeated_augmentations = 4
    config.batch_size = 128
    config.optimizer = "sgd"
    config.momentum = 0.9
    config.learning_rate = 0.1
    config.lr_base_batch_size = 128
    config.weight_decay = 5e-4
    config.decay_biases = True
    config.lr_schedule = "cosine"
    config.lr_boundaries = ()
    config.warmup_epochs = 1.0
    config.warmup_start_factor = 0.01
    # Per step: stepped per epoch, as torchvision does, a 1-epoch warmup would hold all of
    # the first epoch at 1% of the peak.
    config.lr_unit = "step"
    config.num_train_steps = -1
    config.num_epochs = 200.0
    config.label_smoothing = 0.1
    config.mixup_alpha = 0.2
    config.cutmix_alpha = 1.0
    config.mix_switch_prob = 0.5
    config.ema_decay = 0.9995
    config.ema_every_steps = 32
    config.ema_adjust = True
    config.ema_copy_during_warmup = True
    config.log_every_steps = 100
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 0
    return config
