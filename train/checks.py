"""The checks a run makes before it trains: the config's names and values, the
workdir, freezing without a source, and the length of the run."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import resnet_jax
from train import mixing, preemption
from train.optim import LR_UNITS, OPTIMIZERS, SCHEDULES, _choice, total_steps

DTYPES = ("float32", "bfloat16")


def duration(config: Any, steps_per_epoch: int, num_train: int) -> tuple[int, str]:
    """The run's steps, and a line saying which field set them."""
    total = total_steps(config, steps_per_epoch)
    field = (
        f"num_train_steps={config.num_train_steps}"
        if config.num_train_steps > 0
        else f"num_epochs={config.num_epochs}"
    )
    if total < 1:
        raise ValueError(
            f"{field} gives 0 steps ({steps_per_epoch} steps of batch {config.batch_size} per epoch of "
            f"{num_train} train images); set num_epochs > 0 or num_train_steps > 0"
        )
    return total, (
        f"{total} steps of batch {config.batch_size} ({field}): {total / steps_per_epoch:.4g} epochs "
        f"of {num_train} train images"
    )


def check_workdir(workdir: str) -> str:
    """Creates ``workdir`` and proves it writable before any work starts."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test"):
            pass
    except OSError as e:
        raise ValueError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from e
    return workdir


def check_config(config: Any) -> None:
    """Cheap checks of names and values, before any data is read."""
    from train.input_pipeline import augment

    _choice("optimizer", config.optimizer, OPTIMIZERS)
    _choice("lr_schedule", config.lr_schedule, SCHEDULES)
    _choice("lr_unit", config.lr_unit, LR_UNITS)
    _choice("dtype", config.dtype, DTYPES)
    augment.check_augmentation(config)
    mixing.mix_config(config)
    preemption.parse(config.stop_signals)
    if config.model not in resnet_jax.list_models():
        resnet_jax.create_model(config.model)  # raises, with close-name suggestions
    for field in ("batch_size", "log_every_steps", "grad_accum_steps", "keep_checkpoints", "ema_every_steps"):
        if config[field] < 1:
            raise ValueError(f"config.{field}={config[field]} must be >= 1")
    if not 0.0 <= config.warmup_start_factor <= 1.0:
        raise ValueError(
            f"config.warmup_start_factor={config.warmup_start_factor} must be in [0, 1]: the warmup's "
            "first lr as a fraction of the peak (torchvision's --lr-warmup-decay)"
        )
    if config.lr_min < 0:
        raise ValueError(f"config.lr_min={config.lr_min} must be >= 0")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"config.ema_decay={config.ema_decay} must be in [0, 1)")
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        raise ValueError(
            f"num_epochs={config.num_epochs} and num_train_steps={config.num_train_steps} give a run of 0 "
            "steps; set num_epochs > 0, or num_train_steps > 0 (which wins when both are set)"
        )


def check_init_from(config: Any) -> None:
    """Freezing only makes sense for weights that came from somewhere: a fresh run that
    freezes without ``init_from`` would train a head on random features."""
    frozen = [f"freeze={config.freeze!r}"] if config.freeze.strip() else []
    frozen += ["freeze_batch_stats=True"] if config.freeze_batch_stats else []
    if frozen and not config.init_from:
        raise ValueError(
            f"{' and '.join(frozen)} with no init_from would freeze randomly initialised weights. Set "
            "--config.init_from=SOURCE (a weights tag such as torchvision_v1, a `python -m "
            "resnet_jax.convert` directory or a workdir), or train every weight from a random init "
            "with --config.freeze='' --config.freeze_batch_stats=False"
        )
