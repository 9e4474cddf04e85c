"""Mixup, CutMix and the soft-target losses of the train step (train/mixing.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import mixing

DRAWS = 4000


def _draws(config, images):
    keys = jax.random.split(jax.random.key(0), DRAWS)
    return jax.jit(jax.vmap(lambda k: mixing.mix(k, images, config)))(keys)


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_mixup_lambda_is_beta_alpha_alpha(alpha):
    images = jnp.stack([jnp.zeros((4, 4, 1)), jnp.ones((4, 4, 1))])  # example 0 is 0, its partner 1
    mixed, lam = _draws(mixing.MixConfig(mixup_alpha=alpha), images)
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)). Over 4,000 draws the mean's standard
    # error is below 0.007 and the variance's below 2.5% of it.
    assert abs(float(lam.mean()) - 0.5) < 0.03
    variance = 1 / (4 * (2 * alpha + 1))
    assert abs(float(lam.var()) - variance) < 0.1 * variance
    # The image is lam * own + (1 - lam) * partner.
    np.testing.assert_allclose(mixed[:, 0, 0, 0, 0], 1.0 - lam, rtol=0, atol=1e-6)


def test_cutmix_lambda_is_the_unpasted_area_exactly_and_boxes_clip():
    h, w = 12, 20
    images = jnp.arange(3, dtype=jnp.float32)[:, None, None, None] * jnp.ones((3, h, w, 1))
    mixed, lam = _draws(mixing.MixConfig(cutmix_alpha=1.0), images)
    own = np.sum(np.asarray(mixed[:, 0]) == 0.0, axis=(1, 2, 3))  # example 0's own pixels
    # lam is that count over h * w, exactly (to float32's rounding of the quotient).
    np.testing.assert_array_equal(np.round(np.asarray(lam, np.float64) * h * w), own)
    np.testing.assert_allclose(np.asarray(lam), own / (h * w), rtol=0, atol=6e-8)
    pasted = np.asarray(mixed[:, 0]) == 2.0  # its partner is the last example (a roll by 1)
    assert np.all(pasted | (np.asarray(mixed[:, 0]) == 0.0))
    # Some boxes were clipped at an edge, and lam stayed exact there too.
    rows, cols = pasted.any(axis=(2, 3)), pasted.any(axis=(1, 3))
    clipped = rows[:, 0] | rows[:, -1] | cols[:, 0] | cols[:, -1]
    assert clipped.sum() > DRAWS // 4
    # Clipping only shrinks boxes: the true lam's mean is above Beta(1, 1)'s 1/2.
    assert float(lam.mean()) > 0.55


def test_both_switch_and_a_batch_may_stay_unmixed():
    h, w = 8, 8
    images = jnp.arange(2, dtype=jnp.float32)[:, None, None, None] * jnp.ones((2, h, w, 1))
    config = mixing.MixConfig(mixup_alpha=0.2, cutmix_alpha=1.0, switch_prob=0.5, prob=0.8)
    mixed, lam = _draws(config, images)
    x = np.asarray(mixed[:, 0, :, :, 0])
    # Mixup leaves values strictly between 0 and 1 (Beta draws are never exactly 0 or 1):
    # it is chosen in 0.8 x 0.5 of the batches.
    is_mixup = np.any((x > 0.0) & (x < 1.0), axis=(1, 2))
    assert abs(is_mixup.mean() - 0.4) < 0.03
    # An unmixed batch, or a cutmix box of no area, leaves the image as it was, with lam 1.
    same = np.all(x == 0.0, axis=(1, 2))
    np.testing.assert_array_equal(np.asarray(lam)[same], 1.0)
    assert 0.2 <= same.mean() < 0.2 + 0.4 * 0.1  # empty boxes: lam > 15/16 at 8x8, 6% of U(0, 1)
    # With mixing always on and only mixup, every batch is mixed (Beta(0.2, 0.2) rounds
    # to exactly 1 in float32 now and then: its mass is near 0 and 1).
    mixed, lam = _draws(mixing.MixConfig(mixup_alpha=0.2), images)
    assert np.mean(np.asarray(lam) < 1) > 0.97


def test_mixed_targets_are_smoothed_then_mixed_and_rows_sum_to_one():
    labels = jnp.asarray([0, 3, 1, 1])
    targets = mixing.soft_targets(labels, 5, label_smoothing=0.1)
    np.testing.assert_allclose(targets[0], [0.92, 0.02, 0.02, 0.02, 0.02], atol=1e-7)
    mixed = mixing.mix_targets(targets, jnp.float32(0.7))
    np.testing.assert_allclose(mixed.sum(-1), 1.0, atol=1e-6)
    # Row 1 mixes its own label 3 (0.7) with row 0's label 0 (0.3).
    np.testing.assert_allclose(mixed[1], 0.7 * targets[1] + 0.3 * targets[0], atol=1e-7)


def test_bce_equals_a_hand_computed_value():
    logits = jnp.asarray([[2.0, -1.0, 0.0]])
    # Per class -[t log s(z) + (1 - t) log(1 - s(z))]: log(1 + e^-2), log(1 + e^-1), log 2.
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0)) + np.log(2.0)) / 3  # 0.377779
    got = mixing.soft_loss(logits, jnp.asarray([[1.0, 0.0, 0.0]]), "bce")
    np.testing.assert_allclose(got, [expected], rtol=1e-6)
    # timm's target threshold binarises soft targets first: 0.85/0.1/0.05 at 0.2 is 1/0/0.
    soft = jnp.asarray([[0.85, 0.1, 0.05]])
    np.testing.assert_allclose(mixing.soft_loss(logits, soft, "bce", 0.2), [expected], rtol=1e-6)
    assert not np.allclose(mixing.soft_loss(logits, soft, "bce"), [expected], rtol=1e-3)
    # Softmax cross-entropy against a one-hot target is the integer-label loss.
    np.testing.assert_allclose(
        mixing.soft_loss(logits, jnp.asarray([[1.0, 0.0, 0.0]])),
        -jax.nn.log_softmax(logits)[:, 0],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match=r"unknown loss 'focal'; valid: softmax, bce"):
        mixing.soft_loss(logits, soft, "focal")


def test_the_configs_mixing_fields_are_checked():
    # The fields are checked once, by train.settings (mixing.mix_config is gone).
    from train import settings
    from train.configs import default

    assert settings.step(default.get_config()).mix == mixing.NO_MIXING
    for field, value, match in (
        ("mixup_alpha", -0.2, r"config.mixup_alpha=-0.2 must be >= 0"),
        ("mix_switch_prob", 1.5, r"config.mix_switch_prob=1.5 is a probability"),
        ("loss", "focal", r"unknown loss 'focal'; valid: softmax, bce"),
    ):
        config = default.get_config()
        config[field] = value
        with pytest.raises(ValueError, match=match):
            settings.step(config)
