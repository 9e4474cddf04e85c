"""Weight conversion from other frameworks into resnet_jax variables.

Every converter returns ``{'params': ..., 'batch_stats': ...}`` for a model built by
``create_model(model_name)`` and checks each array against that model's own shapes:
a mismatch names the parameter path and both shapes. None of them imports the
source framework; the source arrives as arrays.

- ``torchvision``: ``from_torchvision`` and its inverse ``to_torchvision``;
- ``timm``: ``from_timm``, and a timm Hub folder's weights and preprocessing
  (``timm_hub_folder``, ``timm_data_config``);
- ``keras``: ``from_keras`` (Keras applications, v1 and V2);
- ``files``: reading weight files safely (``load_state_dict``, ``keras_h5_weights``)
  and converted weights on disk (``save``, ``load_converted``).

This package sits above the model definitions and below ``resnet_jax.pretrained``,
which downloads, converts and caches: it imports neither that nor the catalogue.
"""

from resnet_jax.convert._target import Variables
from resnet_jax.convert.files import (
    UnsafeWeightsError,
    keras_h5_weights,
    load_converted,
    load_state_dict,
    save,
)
from resnet_jax.convert.keras import KERAS_BN_EPSILON, from_keras, keras_preprocessing, keras_weights
from resnet_jax.convert.timm import data_config as timm_data_config
from resnet_jax.convert.timm import from_timm
from resnet_jax.convert.timm import hub_folder as timm_hub_folder
from resnet_jax.convert.torchvision import from_torchvision, to_torchvision

__all__ = [
    "KERAS_BN_EPSILON",
    "UnsafeWeightsError",
    "Variables",
    "from_keras",
    "from_timm",
    "from_torchvision",
    "keras_h5_weights",
    "keras_preprocessing",
    "keras_weights",
    "load_converted",
    "load_state_dict",
    "save",
    "timm_data_config",
    "timm_hub_folder",
    "to_torchvision",
]
