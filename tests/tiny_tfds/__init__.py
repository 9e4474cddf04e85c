"""A tiny TFDS dataset for the tests: 200 of scikit-learn's digits as 8x8 PNGs, 160 train and
40 test. Preparing it needs TensorFlow (TFDS's writer); reading it back does not."""

import numpy as np
import tensorflow_datasets as tfds


class TinyDigits(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {"image": tfds.features.Image(shape=(8, 8, 1)), "label": tfds.features.ClassLabel(num_classes=10)}
        )
        return self.dataset_info_from_configs(features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 160), "test": self._generate_examples(160, 200)}

    def _generate_examples(self, lo, hi):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        for i in range(lo, hi):
            yield i, {"image": images[i], "label": int(digits.target[i])}


def prepare(data_dir) -> str:
    """Writes the dataset as ArrayRecord files under ``data_dir``; returns its folder."""
    builder = TinyDigits(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder.data_dir
