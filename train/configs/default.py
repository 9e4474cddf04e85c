r"""python -m train.main

The offline quickstart: a CIFAR ResNet-20 on scikit-learn's bundled digits (1,797 real
8x8 handwritten digits; 1,437 train, 360 held-out test, a fixed stratified split). It
needs no download. Every other config imports this one and overrides a few fields.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    # One flat ConfigDict, filled by section (each function below sets its fields, one per line).
    config = ml_collections.ConfigDict()
    for section in (_model, _data, _optimisation, _fine_tuning, _bookkeeping):
        section(config)
    return config


def _model(config: ml_collections.ConfigDict) -> None:
    """The network."""
    # Model: any name from resnet_jax.list_models().
    config.model = "resnet20"
    config.dtype = "float32"  # 'bfloat16': bf16 compute, float32 params and BN statistics
    config.drop_rate = 0.0  # dropout before the classifier
    config.drop_path_rate = 0.0  # stochastic depth at the last block, 0 at the first (timm's rule)
    config.zero_init_last = False  # start each block's last BN scale at 0 (Goyal et al. 2017; timm's)


def _data(config: ml_collections.ConfigDict) -> None:
    """The dataset, its augmentation and its loader."""
    # Data: 'digits' (bundled), 'image_folder' (data_dir/train/CLASS/*, data_dir/test/CLASS/*)
    # or any TFDS image-classification dataset name (cifar10, mnist, imagenet2012, ...).
    config.dataset = "digits"
    config.data_dir = ""  # TFDS data_dir, or the image-folder root; '' = TFDS default
    config.manual_dir = ""  # TFDS manual_dir, for datasets such as imagenet2012
    config.classes = ()  # a subset of label ids, renumbered 0..K-1 (digits, image_folder)
    config.train_split = "train"
    config.eval_split = ""  # '' = 'test', else 'validation'
    config.validation_examples = 0  # > 0: hold out the last N train examples as the eval split
    # The share of a split's images that may fail to decode: each is skipped when read
    # (training reads the next image instead; evaluation leaves it out), named in the log
    # and summary.json; past this share the run stops with an error naming a few.
    config.undecodable_limit = 0.01
    config.image_size = 0  # 0 = the dataset's own size (needed > 0 for variable-size images)
    config.augment = "none"  # 'none' | 'cifar' (pad-crop, flip) | 'imagenet' (inception crop, flip)
    config.crop_padding = 4  # 'cifar' augmentation: zero padding before the random crop
    # 'imagenet' train crops: antialiased resize, as torchvision's RandomResizedCrop.
    # False: plain resize, as the Flax ImageNet example; the decode+crop+resize costs ~1/3 less.
    config.train_antialias = True
    config.interpolation = "bilinear"  # 'bilinear' | 'bicubic': resizes and the policies' geometric ops
    config.train_image_size = 0  # train crop size; 0 = image_size (torchvision's V2 recipe: 176)
    config.eval_resize_size = 0  # 'imagenet' eval: shorter side, then crop image_size; 0 = image_size/0.875
    # After the crop and flip: '' | 'trivialaugment' (torchvision's TrivialAugmentWide) |
    # 'autoaugment' (torchvision's ImageNet policy) | 'randaugment' (timm's op set, as below).
    config.auto_augment = ""
    config.randaugment_num_ops = 2
    config.randaugment_magnitude = 9.0  # timm's 0..10 scale ('rand-m9')
    config.randaugment_magnitude_std = 0.5  # magnitude ~ N(magnitude, this) per op ('mstd0.5')
    config.random_erasing = 0.0  # probability (torchvision's V2 recipe: 0.1)
    config.random_erasing_scale = (0.02, 0.33)  # erased fraction of the area
    config.random_erasing_ratio = (0.3, 3.3)  # erased box's height / width
    config.random_erasing_value = "0"  # '0': the pixel normalising to 0 | 'random': N(0, 1) per pixel
    # k > 1: each example k times in a row, augmented differently (RASampler); an epoch
    # still counts the split's size, so k epochs hold every example k times.
    config.repeated_augmentations = 1
    config.mean = (0.5,)  # per-channel normalisation, on the [0, 1] scale
    config.std = (0.5,)
    # grain reads and augments the batches: input_threads threads in each of input_workers
    # worker processes (0: threads in the training process only). On a GPU host, set the
    # workers to about the host's cores; on a CPU the training step needs the cores itself.
    config.input_workers = 0
    config.input_threads = 2
    config.prefetch = 2  # batches placed on the devices ahead of the step that uses them
    # CPU only: compile the steps with XLA's YNNPACK kernels (resnet_jax.xla); False = XLA's own.
    config.cpu_ynnpack = True


def _optimisation(config: ml_collections.ConfigDict) -> None:
    """The optimizer, its schedule, the loss and the EMA."""
    # Optimisation.
    config.batch_size = 64  # global, over all devices and processes
    config.eval_batch_size = 0  # 0 = batch_size
    config.optimizer = "sgd"  # sgd | nesterov | adam | adamw | lars | lamb
    config.learning_rate = 0.1
    config.lr_base_batch_size = 0  # > 0: lr = learning_rate * batch_size / this (Goyal et al. 2017)
    config.momentum = 0.9
    # True: each device's gradient is summed over the devices in float32, as PyTorch DDP
    # does. By default a bf16 model's gradients are summed in bf16 (half the bytes; about
    # 7% error at 256 devices on a ring, BENCHMARKS.md), then cast to the float32 params.
    config.float32_grad_reduction = False
    config.weight_decay = 5e-4  # never applied to BatchNorm parameters
    config.decay_biases = False  # True: decay biases too (torchvision's recipes; timm's spare them)
    config.lr_schedule = "cosine"  # cosine | piecewise | constant
    config.lr_min = 0.0  # 'cosine' decays to this (timm's --min-lr)
    config.warmup_epochs = 1.0
    config.warmup_start_factor = 0.0  # the warmup starts at this * the peak (torchvision: 0.01)
    config.warmup_prefix = True  # False: the cosine spans the warmup too (timm's default)
    config.lr_unit = "step"  # 'step' | 'epoch': hold the lr through each epoch, as torchvision and timm do
    config.lr_boundaries = ()  # 'piecewise': steps at which the lr is multiplied by lr_decay_factor
    config.lr_boundary_epochs = ()  # the same in epochs, used when lr_boundaries is empty
    config.lr_decay_factor = 0.1
    config.num_epochs = 15.0
    # > 0 wins over num_epochs; on the command line, --config.num_epochs clears it (train.main).
    config.num_train_steps = -1  # -1: unset; 0 is refused
    config.label_smoothing = 0.0
    # On the device, in the train step (train/mixing.py): one of mixup and cutmix per batch.
    config.mixup_alpha = 0.0  # > 0: mixup, lambda ~ Beta(alpha, alpha)
    config.cutmix_alpha = 0.0  # > 0: cutmix, lambda ~ Beta(alpha, alpha), then the box's true area
    config.mix_switch_prob = 0.5  # with both on: the probability a batch gets cutmix
    config.mix_prob = 1.0  # the probability a batch is mixed at all
    config.loss = "softmax"  # 'softmax' cross-entropy | 'bce' (binary, per class; timm's)
    config.bce_threshold = 0.0  # 'bce': > 0 binarises the soft targets (t > threshold; RSB: 0.2)
    config.grad_clip_norm = 0.0  # > 0: clip the global gradient norm
    config.grad_accum_steps = 1  # > 1: one optimizer update every this many batches
    config.ema_decay = 0.0  # > 0: keep an EMA of the weights and BN statistics, and evaluate with it
    config.ema_every_steps = 1  # update the EMA at every k-th step of each epoch (torchvision's V2: 32)
    # True: torchvision's rule, decay = 1 - min(1, (1 - ema_decay) * batch_size * ema_every_steps / epochs)
    config.ema_adjust = False
    config.ema_copy_during_warmup = False  # True: the EMA copies the weights until the warmup ends


def _fine_tuning(config: ml_collections.ConfigDict) -> None:
    """Where the first weights come from, and what trains."""
    # Fine-tuning: init_from in train/finetune.py; freezing and lr groups in train/optim.py.
    # Any --weights string of resnet_jax.predict: a weights tag, a `python -m resnet_jax.convert`
    # output dir, or a workdir (its newest step), resolved by the same function.
    config.init_from = ""
    config.init_from_ema = True  # a workdir that kept an EMA gives its EMA weights; False: its live ones
    config.reinit_head = False  # True: a fresh head even when the class count matches
    config.freeze = ""  # 'backbone', part names ('stem,stage1'), or a regex over param paths
    config.freeze_batch_stats = False  # frozen parts (all, when freeze='') run BN on running averages
    config.head_lr_multiplier = 1.0
    config.backbone_lr_multiplier = 1.0
    config.layer_decay = 1.0  # < 1: lr * layer_decay**k for the part k steps below the head


def _bookkeeping(config: ml_collections.ConfigDict) -> None:
    """Logging, evaluation, checkpoints, stop signals and the seed."""
    # Bookkeeping.
    config.log_every_steps = 20
    config.eval_every_steps = 0  # 0 = once per epoch
    config.checkpoint_every_steps = 0  # 0 = once per epoch
    config.keep_checkpoints = 3  # the last K, plus the best by eval top-1
    # SIGTERM, SIGINT and SIGUSR1 stop a run after its step, saved on every process (exit
    # status 75, train/preemption.py); these comma-separated names too, e.g. 'SIGUSR2,SIGHUP'.
    config.stop_signals = ""
    config.seed = 0
