"""The resnet_jax trainer: ``python -m train.main``. Built on the ``resnet_jax`` library."""
