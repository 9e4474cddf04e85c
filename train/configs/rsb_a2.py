r"""python -m train.main --config=train/configs/rsb_a2.py --workdir=/tmp/rsb_a2 --config.data_dir=DIR

"ResNet strikes back" procedure A2 for ResNet-50 (300 epochs; published 79.8% top-1 at 224).
Its fields, their source and timm's command are in `train/configs/rsb.py`.
"""

from train.configs import rsb


def get_config():
    return rsb.get_config("a2")
