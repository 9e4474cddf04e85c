r"""python -m train.main --config=train/configs/finetune_imagenet_resnet50.py --workdir=/tmp/flowers

ImageNet-pretrained ResNet-50 (torchvision's IMAGENET1K_V1, converted and cached on first
use; `--config.init_from=DIR` takes a `python -m resnet_jax.convert` output instead)
fine-tuned on TFDS tf_flowers (3,670 photos, 5 classes; the last 670 held out) at 224:
SGD at 0.01 with a 10x head; every parameter trains, while every BatchNorm runs on its
ImageNet running averages; inception crop + flip. `train/configs/linear_probe.py` is the
linear probe of the same setup. `--config.dataset=oxford_flowers102
--config.validation_examples=0` uses that dataset's own test split.
"""

from train.configs import imagenet_resnet50


def get_config():
    config = imagenet_resnet50.get_config()
    config.dataset = "tf_flowers"
    config.validation_examples = 670
    config.init_from = "torchvision_v1"  # a registered tag of config.model, or a directory
    config.freeze = ""  # '' fine-tunes everything; 'backbone' is a linear probe
    config.freeze_batch_stats = True  # all BatchNorms on running averages (with freeze: the frozen ones)
    config.batch_size = 64
    config.learning_rate = 0.01
    config.lr_base_batch_size = 0
    config.head_lr_multiplier = 10.0
    config.weight_decay = 1e-4
    config.label_smoothing = 0.1
    config.warmup_epochs = 1.0
    config.num_epochs = 10.0
    config.log_every_steps = 10
    return config
