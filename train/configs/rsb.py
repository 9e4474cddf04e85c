r"""python -m train.main --config=train/configs/rsb.py:a1 --workdir=/tmp/rsb_a1 --config.data_dir=DIR

The ResNet-50 procedures A1, A2 and A3 of "ResNet strikes back: An improved training
procedure in timm" (Wightman, Touvron and Jégou 2021, arXiv:2110.00476, Table 1), shared
by ``rsb_a1.py``, ``rsb_a2.py`` and ``rsb_a3.py``. Published top-1 at 224: A1 80.4%,
A2 79.8%, A3 78.1% (A3 trains at 160).

The same recipe in timm's train.py flags (8 GPUs x 256 = 2048), for procedure A1:

    ./distributed_train.sh 8 /imagenet --model resnet50 -b 256 --opt lamb --lr 5e-3 \
      --weight-decay 0.01 --sched cosine --epochs 600 --warmup-epochs 5 \
      --warmup-lr 1e-4 --min-lr 1e-6 --bce-loss --bce-target-thresh 0.2 --smoothing 0 \
      --mixup 0.2 --cutmix 1.0 --mixup-switch-prob 0.5 --aa rand-m7-mstd0.5-inc1 \
      --reprob 0 --aug-repeats 3 --drop-path 0.05 --crop-pct 0.95 \
      --train-interpolation bicubic --interpolation bicubic --amp

A2: --epochs 300 --weight-decay 0.02 --mixup 0.1. A3: --epochs 100 --weight-decay 0.02
--mixup 0.1 --lr 8e-3 --aa rand-m6-mstd0.5-inc1, no --aug-repeats, no --drop-path,
--img-size 160 (evaluated at 224).

What the paper's table leaves to timm's code: its Lamb clips the global gradient norm
at 1.0 (max_grad_norm) and adapts only the decayed parameters (always_adapt=False); its
cosine spans the warmup (warmup_prefix=False) and steps once per epoch; its resnet50
zero-initialises each block's last BN scale; biases and norms take no decay.

Another `--config.batch_size` scales the lr linearly (lr_base_batch_size: 2048).
Not measured here: no GPU has trained them.
"""

from train.configs import imagenet_resnet50

PROCEDURES = {
    # field: (A1, A2, A3)
    "num_epochs": (600.0, 300.0, 100.0),
    "learning_rate": (5e-3, 5e-3, 8e-3),
    "weight_decay": (0.01, 0.02, 0.02),
    "mixup_alpha": (0.2, 0.1, 0.1),
    "randaugment_magnitude": (7.0, 7.0, 6.0),
    "drop_path_rate": (0.05, 0.05, 0.0),
    "repeated_augmentations": (3, 3, 1),
    "train_image_size": (224, 224, 160),
}


def get_config(procedure: str = "a1"):
    """The config of procedure ``'a1'``, ``'a2'`` or ``'a3'``."""
    if procedure not in ("a1", "a2", "a3"):
        raise ValueError(f"unknown RSB procedure {procedure!r}; valid: a1, a2, a3")
    config = imagenet_resnet50.get_config()
    config.model = "resnet50"
    config.zero_init_last = True
    config.dtype = "bfloat16"  # the paper trains in mixed precision
    config.augment = "imagenet"
    config.train_antialias = True
    config.interpolation = "bicubic"
    config.image_size = 224
    config.eval_resize_size = 235  # crop ratio 0.95: int(224 / 0.95)
    config.auto_augment = "randaugment"
    config.randaugment_num_ops = 2
    config.randaugment_magnitude_std = 0.5
    config.random_erasing = 0.0
    config.batch_size = 2048
    config.optimizer = "lamb"
    config.lr_base_batch_size = 2048
    config.grad_clip_norm = 1.0  # timm's Lamb: max_grad_norm=1.0
    config.decay_biases = False
    config.lr_schedule = "cosine"
    config.lr_min = 1e-6
    config.warmup_epochs = 5.0
    config.warmup_prefix = False
    config.lr_unit = "epoch"
    config.num_train_steps = -1
    config.label_smoothing = 0.0
    config.loss = "bce"
    config.bce_threshold = 0.2
    config.cutmix_alpha = 1.0
    config.mix_switch_prob = 0.5
    config.mix_prob = 1.0
    config.ema_decay = 0.0
    config.drop_rate = 0.0
    i = ["a1", "a2", "a3"].index(procedure)
    for field, values in PROCEDURES.items():
        config[field] = values[i]
    config.warmup_start_factor = 1e-4 / config.learning_rate  # --warmup-lr 1e-4
    return config
