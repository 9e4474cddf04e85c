r"""python -m train.main --config=train/configs/imagenet_resnet50_tv2.py --config.data_dir=DIR --workdir=v2

torchvision's recipe for ResNet50_Weights.IMAGENET1K_V2 (published 80.858% top-1 at
resize 232, crop 224), field by field. Source: the "ResNet" entry of
pytorch/vision references/classification/README.md, run there on 8 GPUs with

    torchrun --nproc_per_node=8 train.py --model resnet50 --batch-size 128 --lr 0.5 \
      --lr-scheduler cosineannealinglr --lr-warmup-epochs 5 --lr-warmup-method linear \
      --auto-augment ta_wide --epochs 600 --random-erase 0.1 --weight-decay 0.00002 \
      --norm-weight-decay 0.0 --label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 \
      --train-crop-size 176 --model-ema --val-resize-size 232 --ra-sampler --ra-reps 4

and the defaults of its train.py for what the command leaves out: SGD momentum 0.9,
--lr-warmup-decay 0.01, --model-ema-steps 32, --model-ema-decay 0.99998, bilinear
interpolation, --bias-weight-decay unset (biases take the full decay), float32.

The batch is global: 8 x 128 = 1024. Another `--config.batch_size` scales the lr
linearly (Goyal et al. 2017; lr_base_batch_size: 0.5 * batch_size / 1024), and the EMA
decay follows the batch through torchvision's own adjustment (ema_adjust). The schedule
steps once per epoch (lr_unit='epoch'), as torchvision's LR scheduler does. Not measured
here: no GPU has trained it.
"""

from train.configs import imagenet_resnet50


def get_config():
    config = imagenet_resnet50.get_config()
    config.model = "resnet50"
    config.zero_init_last = False  # torchvision's resnet50: zero_init_residual=False
    config.dtype = "float32"  # the command has no --amp; bfloat16 is ~2x faster on GPUs
    # Input: RandomResizedCrop(176) + flip + TrivialAugmentWide + RandomErasing(0.1);
    # eval Resize(232) + CenterCrop(224); bilinear, antialiased (PIL).
    config.augment = "imagenet"
    config.train_antialias = True
    config.interpolation = "bilinear"
    config.train_image_size = 176
    config.image_size = 224
    config.eval_resize_size = 232
    config.auto_augment = "trivialaugment"
    config.random_erasing = 0.1
    config.repeated_augmentations = 4  # --ra-sampler --ra-reps 4
    # Optimisation.
    config.batch_size = 1024
    config.optimizer = "sgd"
    config.momentum = 0.9
    config.learning_rate = 0.5
    config.lr_base_batch_size = 1024
    config.weight_decay = 2e-5
    config.decay_biases = True  # --norm-weight-decay 0.0 spares the norms only
    config.lr_schedule = "cosine"
    config.lr_min = 0.0
    config.warmup_epochs = 5.0
    config.warmup_start_factor = 0.01  # --lr-warmup-decay
    config.warmup_prefix = True  # SequentialLR: cosine over the 595 epochs after the warmup
    config.lr_unit = "epoch"
    config.num_epochs = 600.0
    config.num_train_steps = -1
    config.label_smoothing = 0.1
    config.mixup_alpha = 0.2
    config.cutmix_alpha = 1.0
    config.mix_switch_prob = 0.5  # RandomChoice([MixUp, CutMix])
    config.mix_prob = 1.0
    config.loss = "softmax"
    config.ema_decay = 0.99998
    config.ema_every_steps = 32
    config.ema_adjust = True
    config.ema_copy_during_warmup = True
    return config
