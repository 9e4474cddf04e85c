"""Strict JAX settings for every test: silent rank promotion is a bug here."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
# Eager init compiles one random-normal kernel per parameter shape; the partitionable
# threefry makes each of those compiles ~5x slower on CPU, and no test shards keys.
jax.config.update("jax_threefry_partitionable", False)
