r"""python -m train.main --config=train/configs/finetune_cifar.py --config.data_dir=DIR --config.init_from=SRC

Fine-tunes a CIFAR backbone onto new classes: by default CIFAR-10 classes 5-9 (dog,
frog, horse, ship, truck) from an image folder, starting from a workdir trained on
classes 0-4, e.g.

    python -m train.main --config=train/configs/cifar10.py --config.dataset=image_folder \
        --config.data_dir=DIR --config.classes="(0,1,2,3,4)" --workdir=SRC

The backbone and its BatchNorm statistics are frozen (a linear probe on its features);
`--config.freeze=''` fine-tunes everything, `--config.freeze=stem,stage1` part of it.
The head is re-initialised for the new classes.
"""

from train.configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.dataset = "image_folder"
    config.data_dir = ""  # required: DIR/train/CLASS/*, DIR/test/CLASS/*
    config.classes = (5, 6, 7, 8, 9)
    config.init_from = ""  # required: the source workdir, or a converted-weights directory
    config.reinit_head = True  # new classes: the source head's class i means nothing here
    config.freeze = "backbone"
    config.freeze_batch_stats = True
    config.learning_rate = 0.1
    config.lr_schedule = "cosine"
    config.lr_boundaries = ()
    config.warmup_epochs = 0.0
    config.num_train_steps = 200
    config.eval_every_steps = 0  # at the end
    config.checkpoint_every_steps = 100
    return config
