r"""python -m train.main --config=train/configs/mnist.py --workdir=/tmp/mnist

MNIST from TFDS at 28x28x1 with Adam at 1e-3 and plain cross-entropy: the setup of
the articles this project grew from. `--config.dataset=fashion_mnist` works the same.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.dataset = "mnist"
    config.model = "resnet20"
    config.mean = (0.1307,)
    config.std = (0.3081,)
    config.batch_size = 128
    config.optimizer = "adam"
    config.learning_rate = 1e-3
    config.weight_decay = 0.0
    config.lr_schedule = "constant"
    config.warmup_epochs = 0.0
    config.num_epochs = 5.0
    config.log_every_steps = 100
    return config
