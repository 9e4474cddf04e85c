r"""python -m train.main --config=train/configs/imagenet_resnet50.py --workdir=/tmp/i1k --config.data_dir=DIR

ResNet-50 on ImageNet after Goyal et al. 2017: lr 0.1 * batch / 256 with a 5-epoch
linear warmup, then cosine decay (or `--config.lr_schedule=piecewise`: divided by 10
at epochs 30, 60 and 80), 90 epochs, SGD with momentum 0.9, weight decay 1e-4 on
kernels only (never on BatchNorm parameters or biases), zero-initialised last BN scale
in each block, inception crop + flip at 224 (plain bilinear resize, as the Flax ImageNet
example: ~1.8x the input pipeline's images/s of an antialiased one, BENCHMARKS.md),
resize 256 + centre crop 224 to evaluate.
`--config.label_smoothing=0.1` is the optional smoothing.

imagenet2012 needs a manual download: put ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in `--config.manual_dir` (default DATA_DIR/downloads/manual).
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "imagenet2012"
    config.model = "resnet50"
    config.zero_init_last = True
    config.eval_split = "validation"
    config.image_size = 224
    config.augment = "imagenet"
    config.train_antialias = False  # the host decodes and crops ~1.8x as many images/s
    config.mean = (0.485, 0.456, 0.406)
    config.std = (0.229, 0.224, 0.225)
    config.input_workers = 8  # grain worker processes: decoding ImageNet JPEGs needs the host's cores
    config.batch_size = 1024
    config.optimizer = "sgd"
    config.learning_rate = 0.1
    config.lr_base_batch_size = 256  # lr = 0.1 * batch_size / 256
    config.momentum = 0.9
    config.weight_decay = 1e-4
    config.lr_schedule = "cosine"
    config.warmup_epochs = 5.0
    config.lr_boundary_epochs = (30, 60, 80)  # used by lr_schedule='piecewise'
    config.lr_decay_factor = 0.1
    config.num_epochs = 90.0
    config.label_smoothing = 0.0
    config.dtype = "bfloat16"
    config.log_every_steps = 100
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 0
    return config
