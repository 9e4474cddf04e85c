r"""python -m train.main --config=train/configs/rsb_a1.py --workdir=/tmp/rsb_a1 --config.data_dir=DIR

"ResNet strikes back" procedure A1 for ResNet-50 (600 epochs; published 80.4% top-1 at 224).
Its fields, their source and timm's command are in `train/configs/rsb.py`.
"""

from train.configs import rsb


def get_config():
    return rsb.get_config("a1")
