"""The recipe presets against their sources: every field against the published value
(a table naming each source), and the pieces their sources' code defines against that
code: torchvision's LR schedule and EMA, timm's cosine schedule and Lamb."""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import optim, settings, steps
from train.configs import cifar10_tv2, imagenet_resnet50_tv2, rsb_a1, rsb_a2, rsb_a3


def _lr(config, steps_per_epoch):
    """A preset's schedule, built from its checked settings as the trainer builds it."""
    total = settings.length(config).total_steps(steps_per_epoch)
    return optim.create_learning_rate_fn(settings.optim(config), steps_per_epoch, total)


def _ema(config, steps_per_epoch, total):
    """A preset's EMA in the compiled step, as the trainer builds it."""
    return steps.ema_schedule(
        settings.ema(config), steps_per_epoch, total, config.batch_size, config.warmup_epochs
    )


TV_README = "torchvision references/classification/README.md, ResNet50 IMAGENET1K_V2 command"
TV_TRAIN = "torchvision references/classification/train.py default"
TV_PRESETS = "torchvision references/classification presets.py"
RSB = "Wightman et al. 2021 (arXiv:2110.00476) Table 1"
TIMM_ARGS = "timm train.py flags of the RSB runs"
TIMM_CODE = "timm's code default"

# (field, value in the preset, source). lr is per the preset's own batch.
TV2 = [
    ("model", "resnet50", TV_README + " (--model resnet50)"),
    ("batch_size", 1024, TV_README + " (8 GPUs x --batch-size 128)"),
    ("optimizer", "sgd", TV_TRAIN + " (--opt sgd)"),
    ("momentum", 0.9, TV_TRAIN + " (--momentum 0.9)"),
    ("learning_rate", 0.5, TV_README + " (--lr 0.5)"),
    ("lr_base_batch_size", 1024, "linear scaling from the published batch"),
    ("num_epochs", 600.0, TV_README + " (--epochs 600)"),
    ("lr_schedule", "cosine", TV_README + " (--lr-scheduler cosineannealinglr)"),
    ("warmup_epochs", 5.0, TV_README + " (--lr-warmup-epochs 5 --lr-warmup-method linear)"),
    ("warmup_start_factor", 0.01, TV_TRAIN + " (--lr-warmup-decay 0.01)"),
    ("warmup_prefix", True, TV_TRAIN + " (SequentialLR: cosine T_max = epochs - warmup)"),
    ("lr_min", 0.0, TV_TRAIN + " (--lr-min 0.0)"),
    ("lr_unit", "epoch", TV_TRAIN + " (lr_scheduler.step() once per epoch)"),
    ("weight_decay", 2e-5, TV_README + " (--weight-decay 0.00002)"),
    ("decay_biases", True, TV_README + " (--norm-weight-decay 0.0 only; --bias-weight-decay unset)"),
    ("label_smoothing", 0.1, TV_README + " (--label-smoothing 0.1)"),
    ("mixup_alpha", 0.2, TV_README + " (--mixup-alpha 0.2)"),
    ("cutmix_alpha", 1.0, TV_README + " (--cutmix-alpha 1.0)"),
    ("mix_switch_prob", 0.5, "torchvision transforms.py (RandomChoice of MixUp and CutMix)"),
    ("auto_augment", "trivialaugment", TV_README + " (--auto-augment ta_wide)"),
    ("random_erasing", 0.1, TV_README + " (--random-erase 0.1)"),
    ("repeated_augmentations", 4, TV_README + " (--ra-sampler --ra-reps 4)"),
    ("ema_decay", 0.99998, TV_TRAIN + " (--model-ema-decay 0.99998)"),
    ("ema_every_steps", 32, TV_TRAIN + " (--model-ema-steps 32)"),
    ("ema_adjust", True, TV_TRAIN + " (adjust = world_size * batch_size * model_ema_steps / epochs)"),
    ("ema_copy_during_warmup", True, TV_TRAIN + " (n_averaged reset while epoch < lr_warmup_epochs)"),
    ("train_image_size", 176, TV_README + " (--train-crop-size 176)"),
    ("eval_resize_size", 232, TV_README + " (--val-resize-size 232)"),
    ("image_size", 224, TV_TRAIN + " (--val-crop-size 224)"),
    ("interpolation", "bilinear", TV_TRAIN + " (--interpolation bilinear)"),
    ("augment", "imagenet", TV_PRESETS + " (RandomResizedCrop + RandomHorizontalFlip)"),
    ("zero_init_last", False, "torchvision models/resnet.py (zero_init_residual=False)"),
    ("loss", "softmax", TV_TRAIN + " (nn.CrossEntropyLoss)"),
    ("drop_path_rate", 0.0, "torchvision models/resnet.py (no stochastic depth)"),
]

# (field, (A1, A2, A3), source)
RSB_FIELDS = [
    ("model", ("resnet50",) * 3, RSB),
    ("batch_size", (2048,) * 3, RSB + " (batch size)"),
    ("optimizer", ("lamb",) * 3, RSB + " (optimizer)"),
    ("learning_rate", (5e-3, 5e-3, 8e-3), RSB + " (LR)"),
    ("lr_base_batch_size", (2048,) * 3, "linear scaling from the published batch"),
    ("weight_decay", (0.01, 0.02, 0.02), RSB + " (weight decay)"),
    ("decay_biases", (False,) * 3, TIMM_CODE + " (param_groups_weight_decay: no decay on biases and norms)"),
    ("grad_clip_norm", (1.0,) * 3, TIMM_CODE + " (Lamb max_grad_norm=1.0)"),
    ("num_epochs", (600.0, 300.0, 100.0), RSB + " (epochs)"),
    ("lr_schedule", ("cosine",) * 3, RSB + " (LR decay: cosine)"),
    ("warmup_epochs", (5.0,) * 3, RSB + " (warmup epochs)"),
    ("lr_min", (1e-6,) * 3, TIMM_ARGS + " (--min-lr 1e-6)"),
    ("warmup_prefix", (False,) * 3, TIMM_CODE + " (CosineLRScheduler warmup_prefix=False)"),
    ("lr_unit", ("epoch",) * 3, TIMM_CODE + " (scheduler stepped per epoch)"),
    ("loss", ("bce",) * 3, RSB + " (BCE loss)"),
    ("bce_threshold", (0.2,) * 3, TIMM_ARGS + " (--bce-target-thresh 0.2)"),
    ("label_smoothing", (0.0,) * 3, RSB + " (label smoothing: none)"),
    ("mixup_alpha", (0.2, 0.1, 0.1), RSB + " (mixup alpha)"),
    ("cutmix_alpha", (1.0,) * 3, RSB + " (cutmix alpha)"),
    ("mix_switch_prob", (0.5,) * 3, TIMM_CODE + " (Mixup switch_prob=0.5)"),
    ("auto_augment", ("randaugment",) * 3, RSB + " (RandAugment)"),
    ("randaugment_magnitude", (7.0, 7.0, 6.0), RSB + " (rand-m7 / rand-m6)"),
    ("randaugment_magnitude_std", (0.5,) * 3, RSB + " (mstd0.5)"),
    ("randaugment_num_ops", (2,) * 3, TIMM_CODE + " (rand_augment_transform: n=2)"),
    ("random_erasing", (0.0,) * 3, RSB + " (erasing: none)"),
    ("repeated_augmentations", (3, 3, 1), RSB + " (repeated augmentation: A1, A2) + " + TIMM_ARGS),
    ("drop_path_rate", (0.05, 0.05, 0.0), RSB + " (stochastic depth)"),
    ("ema_decay", (0.0,) * 3, RSB + " (EMA: none)"),
    ("train_image_size", (224, 224, 160), RSB + " (train resolution)"),
    ("image_size", (224,) * 3, RSB + " (test resolution)"),
    ("eval_resize_size", (235,) * 3, RSB + " (test crop ratio 0.95: int(224 / 0.95))"),
    ("interpolation", ("bicubic",) * 3, TIMM_ARGS + " (bicubic)"),
    ("zero_init_last", (True,) * 3, TIMM_CODE + " (resnet50 zero_init_last=True)"),
    ("dtype", ("bfloat16",) * 3, RSB + " (mixed precision)"),
]


@pytest.mark.parametrize("field,value,source", TV2, ids=[f for f, _, _ in TV2])
def test_torchvision_v2_preset(field, value, source):
    assert imagenet_resnet50_tv2.get_config()[field] == value, source


@pytest.mark.parametrize("field,values,source", RSB_FIELDS, ids=[f for f, _, _ in RSB_FIELDS])
def test_rsb_presets(field, values, source):
    got = tuple(m.get_config()[field] for m in (rsb_a1, rsb_a2, rsb_a3))
    assert got == values, source


def test_rsb_warmup_starts_at_timms_warmup_lr():
    for module in (rsb_a1, rsb_a2, rsb_a3):
        config = module.get_config()
        # --warmup-lr 1e-4: as a factor of the peak, so that it scales with the batch too.
        assert config.warmup_start_factor * config.learning_rate == pytest.approx(1e-4, rel=1e-12)


def test_presets_scale_the_lr_linearly_with_the_batch():
    for module in (imagenet_resnet50_tv2, rsb_a1, cifar10_tv2):
        config = module.get_config()
        published = settings.peak_learning_rate(config)
        config.batch_size //= 4
        assert settings.peak_learning_rate(config) == pytest.approx(published / 4, rel=1e-12)


def _torch():
    torch = pytest.importorskip("torch")
    # timm imports torchvision, whose compiled ops do not load with the CPU torch build.
    sys.modules.setdefault(
        "torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations")
    )
    return torch


def test_lr_per_epoch_matches_torchvisions_schedulers():
    torch = _torch()
    config = imagenet_resnet50_tv2.get_config()
    spe, epochs = 7, int(config.num_epochs)
    lr = _lr(config, spe)
    # torchvision's train.py: LinearLR warmup then CosineAnnealingLR, chained by SequentialLR.
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.learning_rate)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=5)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs - 5, eta_min=0.0)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[5])
    ref = []
    for _ in range(epochs):
        ref.append(opt.param_groups[0]["lr"])
        sched.step()
    ours = np.asarray([float(lr(e * spe + k)) for e in range(epochs) for k in (0, spe - 1)]).reshape(-1, 2)
    np.testing.assert_array_equal(ours[:, 0], ours[:, 1])  # one value through each epoch
    # float32 cosines and products against torch's float64: a few ulps of the 0.5 peak.
    np.testing.assert_allclose(ours[:, 0], ref, rtol=0, atol=4e-7)


def test_rsb_lr_matches_timms_cosine_scheduler():
    torch = _torch()
    from timm.scheduler import CosineLRScheduler

    for module in (rsb_a1, rsb_a3):
        config = module.get_config()
        spe, epochs = 5, int(config.num_epochs)
        lr = _lr(config, spe)
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.learning_rate)
        sched = CosineLRScheduler(
            opt, t_initial=epochs, lr_min=1e-6, warmup_t=5, warmup_lr_init=1e-4, warmup_prefix=False
        )
        ref = [sched._get_lr(e)[0] for e in range(epochs)]
        ours = [float(lr(e * spe + spe - 1)) for e in range(epochs)]
        # float32 against float64, as above, on a peak of 5e-3 or 8e-3.
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-8)


def _lamb_params(rng):
    return {
        "conv": {"kernel": rng.normal(size=(3, 3, 4, 8)).astype(np.float32)},
        "norm": {"scale": (1 + 0.1 * rng.normal(size=8)).astype(np.float32), "bias": np.zeros(8, np.float32)},
        "head": {"kernel": rng.normal(size=(8, 5)).astype(np.float32), "bias": np.zeros(5, np.float32)},
    }


def test_lamb_matches_timms_lamb():
    torch = _torch()
    from timm.optim import Lamb

    config = rsb_a3.get_config()
    rng = np.random.default_rng(0)
    params = _lamb_params(rng)
    grads = [
        jax.tree.map(lambda p: (3 * rng.normal(size=p.shape)).astype(np.float32), params) for _ in range(6)
    ]
    tx = optim.create_optimizer(settings.optim(config), optax.constant_schedule(config.learning_rate))
    # timm's param_groups_weight_decay: kernels decay, biases and norms (1-d) do not.
    leaves = jax.tree_util.tree_leaves_with_path(params)
    tensors = {jax.tree_util.keystr(k): torch.tensor(np.array(v), requires_grad=True) for k, v in leaves}
    decay = [t for k, t in tensors.items() if "kernel" in k]
    no_decay = [t for k, t in tensors.items() if "kernel" not in k]
    ref = Lamb(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    state, ours = tx.init(params), params
    for g in grads:
        updates, state = tx.update(g, state, ours)
        ours = optax.apply_updates(ours, updates)
        for k, v in jax.tree_util.tree_leaves_with_path(g):
            tensors[jax.tree_util.keystr(k)].grad = torch.tensor(np.asarray(v))
        ref.step()
    assert float(optax.tree.norm(grads[0])) > 1.0  # the global clip at 1.0 is exercised
    for k, v in jax.tree_util.tree_leaves_with_path(ours):
        # Six float32 steps, each Adam's ratio and two norms over <= 288 values: within
        # ~1e-6 of the parameters' scale (1), far below one step's size (lr 8e-3).
        np.testing.assert_allclose(
            np.asarray(v), tensors[jax.tree_util.keystr(k)].detach().numpy(), atol=2e-6
        )


def test_decay_mask_with_biases_spares_only_norms():
    params = _lamb_params(np.random.default_rng(0))
    flat = dict(jax.tree_util.tree_leaves_with_path(optim.decay_mask(params, biases=True)))
    assert {jax.tree_util.keystr(k) for k, v in flat.items() if v} == {
        "['conv']['kernel']", "['head']['kernel']", "['head']['bias']",
    }  # fmt: skip


def test_ema_matches_torchvisions_averaged_model():
    torch = _torch()
    spe, every, warmup_epochs, decay, epochs = 10, 4, 1, 0.9, 3
    rng = np.random.default_rng(0)
    values = rng.normal(size=(epochs * spe, 2, 3)).astype(np.float32)  # [step, param|buffer, 3]

    # torchvision's train.py: ExponentialMovingAverage = AveragedModel(use_buffers=True).
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))
            self.register_buffer("m", torch.zeros(3))

    net = Net()
    avg = lambda e, p, n: decay * e + (1 - decay) * p  # noqa: E731
    ema_ref = torch.optim.swa_utils.AveragedModel(net, avg_fn=avg, use_buffers=True)
    ref = []
    for epoch in range(epochs):
        for i in range(spe):
            with torch.no_grad():
                net.w.copy_(torch.tensor(values[epoch * spe + i, 0]))
                net.m.copy_(torch.tensor(values[epoch * spe + i, 1]))
            if i % every == 0:
                ema_ref.update_parameters(net)
                if epoch < warmup_epochs:
                    ema_ref.n_averaged.fill_(0)
            ref.append([ema_ref.module.w.detach().numpy().copy(), ema_ref.module.m.numpy().copy()])

    rule = settings.EmaRule(decay=decay, every=every, adjust=False, copy_during_warmup=True)
    ema = steps.ema_schedule(rule, spe, epochs * spe, 8, warmup_epochs)
    state = steps.TrainState.create(
        apply_fn=None, params={"w": jnp.zeros(3)}, tx=optax.identity(), batch_stats={"m": jnp.zeros(3)},
        ema_params={"w": jnp.zeros(3)}, ema_batch_stats={"m": jnp.zeros(3)},
    )  # fmt: skip
    update = jax.jit(steps.update_ema, static_argnums=2)
    ours = []
    for s in range(epochs * spe):
        state = state.replace(params={"w": values[s, 0]}, batch_stats={"m": values[s, 1]})
        state = update(state, jnp.asarray(s), ema)
        ours.append([np.asarray(state.ema_params["w"]), np.asarray(state.ema_batch_stats["m"])])
    # A lerp per update, in float32 on both sides: contractive, so within a few ulps.
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_ema_adjustment_is_torchvisions():
    config = imagenet_resnet50_tv2.get_config()
    spe = 1251  # ImageNet's 1,281,167 images / 1024
    ema = _ema(config, spe, 600 * spe)
    # torchvision: adjust = world_size * batch_size * model_ema_steps / epochs.
    alpha = min(1.0, (1.0 - 0.99998) * (8 * 128) * 32 / 600)
    assert ema.decay == pytest.approx(1.0 - alpha, rel=1e-12)
    assert ema.every == 32 and ema.copy_until == 5 * spe
    config.batch_size = 64  # a small batch: alpha = 6.8e-5 per update
    assert _ema(config, spe * 16, 600 * spe * 16).decay == pytest.approx(
        1.0 - 2e-5 * 64 * 32 / 600, rel=1e-12
    )


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("lr_unit", "batch", r"unknown lr_unit 'batch'; valid: step, epoch"),
        ("warmup_start_factor", 1.5, r"warmup_start_factor=1.5 must be in \[0, 1\]"),
        ("lr_min", -1e-6, r"lr_min=-1e-06 must be >= 0"),
        ("ema_every_steps", 0, r"ema_every_steps=0 must be >= 1"),
    ],
)
def test_the_recipe_fields_are_checked(field, value, match):
    from train.configs import default

    config = default.get_config()
    config[field] = value
    with pytest.raises(ValueError, match=match):
        settings.check(config)
