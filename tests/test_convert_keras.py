"""Numerical equivalence with Keras 3's applications, an implementation not written here.

Keras runs on its JAX backend (set in conftest), so no TensorFlow is needed.
"""

import jax
import keras
import numpy as np
import pytest
import tolerances

import resnet_jax
from resnet_jax.convert import from_keras, keras_weights


def _randomise(model, seed):
    """Random kernels, biases and BatchNorm statistics far from their initial values."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in weights)
            new = [
                rng.uniform(0.5, 1.5, gamma),
                rng.normal(0, 0.2, beta),
                rng.normal(0, 0.2, mean),
                rng.uniform(0.5, 1.5, var),
            ]
        else:
            new = [weights[0]] + [rng.normal(0, 0.1, w.shape) for w in weights[1:]]
        layer.set_weights([w.astype(np.float32) for w in new])


def _keras_logits(model, x):
    # Keras broadcasts ranks itself; the strict setting of conftest is for our code.
    with jax.numpy_rank_promotion("allow"):
        return np.asarray(model(x, training=False))


@pytest.fixture(
    scope="module",
    params=[
        # (Keras class, our name, overrides it needs, an override that breaks the match)
        ("ResNet50", "resnet50", {"stride_in_1x1": True}, {"stride_in_1x1": False}),
        ("ResNet50V2", "resnet50v2", {}, {"pool_pad_zeros": False}),
    ],
)
def keras_pair(request):
    keras_name, name, overrides, wrong = request.param
    keras.utils.set_random_seed(0)  # the kernels keep Keras's own init; make it repeatable
    model = getattr(keras.applications, keras_name)(
        weights=None, input_shape=(64, 64, 3), classes=7, classifier_activation=None
    )
    _randomise(model, seed=0)
    return model, name, overrides, wrong


def test_logits_match_keras(keras_pair):
    keras_model, name, overrides, _ = keras_pair
    x = np.random.default_rng(1).normal(size=(3, 64, 64, 3)).astype(np.float32)
    expected = _keras_logits(keras_model, x)
    variables = from_keras(keras_model, name)
    ours = resnet_jax.create_model(name, num_classes=7, **overrides)
    got = np.asarray(ours.apply(variables, x, train=False))
    print(f"{name} vs Keras: max |logit diff| = {np.abs(got - expected).max():.2e}")
    assert np.abs(expected).max() > 0.1  # a non-degenerate comparison
    # Keras (on JAX, op by op) and our jitted Linen model: other summation orders.
    tolerance = tolerances.rtol(lambda v: ours.apply(v, x, train=False), variables)
    tolerances.assert_close(name, got, expected, tolerance)


def test_the_keras_specific_fields_matter(keras_pair):
    # v1's stride in the 1x1 and V2's zero-padded stem pool each change the logits.
    keras_model, name, overrides, wrong = keras_pair
    # A dark image: the stem conv is negative for many channels, so the pool's padding shows.
    x = (np.random.default_rng(1).normal(size=(2, 64, 64, 3)) * 0.1 - 3).astype(np.float32)
    variables = from_keras(keras_model, name)
    other = resnet_jax.create_model(name, num_classes=7, **{**overrides, **wrong})
    diff = np.abs(np.asarray(other.apply(variables, x)) - _keras_logits(keras_model, x)).max()
    # Outside the parity bound that test_logits_match_keras holds to. With seed 0 the V2 gap
    # is 0.026, 10x that bound (ResNet50: 0.37, 140x); with Keras's unseeded init it ranged
    # from 0.007 to 0.03.
    scale = np.abs(_keras_logits(keras_model, x)).max()
    tolerance = tolerances.rtol(lambda v: other.apply(v, x), variables) * scale
    print(f"{name} with {wrong}: max |logit diff| {diff:.2e}, the parity tolerance {tolerance:.2e}")
    assert diff > tolerance


def test_shape_mismatch_names_path_and_shapes(keras_pair):
    keras_model, name, _, _ = keras_pair
    layers = keras_weights(keras_model)
    kernel = layers["conv2_block1_1_conv"][0]
    layers["conv2_block1_1_conv"] = [kernel[..., :8], *layers["conv2_block1_1_conv"][1:]]
    with pytest.raises(
        ValueError,
        match=r"conv2_block1_1_conv.*stage1_block1/conv1/kernel.*"
        r"\(1, 1, 64, 8\).*\(1, 1, 64, 64\)",
    ):
        from_keras(layers, name)


def test_wrong_depth_is_refused(keras_pair):
    keras_model, name, _, _ = keras_pair
    with pytest.raises(ValueError, match=r"no source for \d+ variable"):
        from_keras(keras_model, name.replace("50", "101"))


def test_h5_files_convert_like_the_live_model(keras_pair, tmp_path):
    # Keras 3 .weights.h5 and the legacy .h5 (the format of the Keras applications
    # downloads), read with h5py alone.
    keras_model, name, *_ = keras_pair
    keras_model.save_weights(tmp_path / "m.weights.h5")
    with jax.numpy_rank_promotion("allow"):
        keras_model.save(tmp_path / "m.h5")
    live = from_keras(keras_model, name)
    for file in ("m.weights.h5", "m.h5"):
        converted = from_keras(str(tmp_path / file), name)
        jax.tree.map(np.testing.assert_array_equal, converted, live)


def test_a_converted_keras_net_classifies_as_keras_with_its_preprocess_input(keras_pair, tmp_path, capsys):
    # The converter's metadata holds Keras' own preprocess_input (v1: 'caffe', BGR minus
    # the mean pixel; V2: x / 127.5 - 1) and v1's stride override: Classifier, on the same
    # crops of real photographs, gives Keras' probabilities.
    import dataclasses

    import sklearn.datasets

    from resnet_jax import Classifier, sources
    from resnet_jax.convert.__main__ import main as convert_main

    keras_model, name, *_ = keras_pair
    keras_model.save_weights(tmp_path / "m.weights.h5")
    convert_main(
        [
            "--source=keras",
            f"--model={name}",
            f"--weights={tmp_path / 'm.weights.h5'}",
            f"--out={tmp_path / 'c'}",
        ]
    )
    capsys.readouterr()
    loaded = sources.resolve(str(tmp_path / "c"))
    prep = dataclasses.replace(loaded.preprocessing, size=(64, 64), resize_size=73)  # the Keras net's input
    classifier = Classifier.from_model(loaded.model, loaded.variables, prep, loaded.class_names)
    photos = [
        image[i * 90 : i * 90 + 300, i * 120 : i * 120 + 400]
        for image in sklearn.datasets.load_sample_images().images
        for i in range(3)
    ]
    got = classifier.probabilities(photos)
    module = keras.applications.resnet_v2 if name.endswith("v2") else keras.applications.resnet
    crops = np.stack([prep.crop(p) for p in photos])
    logits = _keras_logits(keras_model, module.preprocess_input(crops.astype(np.float32)))
    # Compared as logits up to each row's constant (the random net is confident: its
    # probabilities say little), at test_logits_match_keras' bound for this input.
    ours = np.log(got.astype(np.float64))
    ours, theirs = (v - v.mean(-1, keepdims=True) for v in (ours, logits.astype(np.float64)))
    x = prep.finish(crops)
    tolerance = tolerances.rtol(lambda v: loaded.model.apply(v, x, train=False), loaded.variables)
    # The logits depend on the photograph, by far more than the bound allows.
    assert theirs.std(0).max() > 10 * tolerance * np.abs(theirs).max()
    print(prep.describe())
    tolerances.assert_close(f"{name}: Classifier vs Keras' preprocess_input", ours, theirs, tolerance)
