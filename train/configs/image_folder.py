r"""python -m train.main --config=train/configs/image_folder.py --workdir=/tmp/mine --config.data_dir=ROOT

Your own images: ROOT/train/CLASS/*.jpg and ROOT/test/CLASS/*.jpg (png, bmp and gif
work too), read by grain. The folder is listed, not decoded, at start-up (the listing is
kept in WORKDIR/listing); a file that does not decode is skipped when read and named
(config.undecodable_limit); grayscale, RGBA and CMYK images are converted to RGB. Images
that all share one size train at that size; photographs of varying sizes need
`--config.image_size=224 --config.augment=imagenet --config.model=resnet50`.
"""

from train.configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.dataset = "image_folder"
    config.data_dir = ""  # required: the folder holding train/ and test/
    config.image_size = 0  # 0: the images' own size when they all share one (CIFAR: 32)
    config.lr_schedule = "cosine"
    config.lr_boundaries = ()
    config.warmup_epochs = 1.0
    config.num_train_steps = -1
    config.num_epochs = 30.0
    config.mean = (0.485, 0.456, 0.406)
    config.std = (0.229, 0.224, 0.225)
    config.eval_every_steps = 0
    config.checkpoint_every_steps = 0
    return config
