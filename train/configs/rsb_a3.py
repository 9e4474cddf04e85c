r"""python -m train.main --config=train/configs/rsb_a3.py --workdir=/tmp/rsb_a3 --config.data_dir=DIR

"ResNet strikes back" procedure A3 for ResNet-50 (100 epochs; published 78.1% top-1 at 224).
Its fields, their source and timm's command are in `train/configs/rsb.py`.
"""

from train.configs import rsb


def get_config():
    return rsb.get_config("a3")
