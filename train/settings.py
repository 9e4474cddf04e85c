"""The config, checked once: ``check(config)`` turns the flat ``get_config()`` dict into
frozen dataclasses, one for each part of the trainer, and every rule about a field lives
here.

- ``Model``: the network (``resnet_jax.create_model``'s name and fields);
- ``Length`` and ``Run``: how long the run is, when it logs, evaluates and saves, what it
  stops on, and where its weights start (``init_from``);
- ``Input``: the dataset, its splits, the crop (``augment.Crop``), the policy, random
  erasing, repeated augmentation, the batch sizes and the loader's workers;
- ``Optim``: the optimizer, the learning-rate schedule, weight decay, clipping,
  accumulation, freezing and per-group learning rates;
- ``Step``: what the compiled train step does: normalisation, mixing, the loss, label
  smoothing and the EMA.

Each error names the field, its value and what it takes. The config files stay flat
``ml_collections`` files (``train/configs``); nothing below the trainer's entry point
reads them. Checks that need the data (a dataset's channel count, its size) are made
where the data is opened, ``train.input_pipeline.batching.create_data``.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import resnet_jax
from train import mixing, preemption
from train.input_pipeline import augment, erasing, policies

OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw", "lars", "lamb")
SCHEDULES = ("cosine", "piecewise", "constant")
LR_UNITS = ("step", "epoch")
DTYPES = ("float32", "bfloat16")


def choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``, else a ValueError naming the field."""
    if value not in choices:
        raise ValueError(f"unknown {field} {value!r}; valid: {', '.join(choices)}")
    return value


@dataclasses.dataclass(frozen=True)
class Model:
    """The network: a name from ``resnet_jax.list_models()`` and the fields the trainer sets."""

    name: str = "resnet20"
    dtype: str = "float32"
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    zero_init_last: bool = False


@dataclasses.dataclass(frozen=True)
class Length:
    """``num_train_steps`` > 0 sets the run's length in steps, else ``num_epochs`` (rounded
    down to whole steps)."""

    num_epochs: float = 15.0
    num_train_steps: int = -1

    @property
    def field(self) -> str:
        if self.num_train_steps > 0:
            return f"num_train_steps={self.num_train_steps}"
        return f"num_epochs={self.num_epochs}"

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.num_train_steps > 0:
            return self.num_train_steps
        return int(self.num_epochs * steps_per_epoch)


@dataclasses.dataclass(frozen=True)
class Run:
    """Length, bookkeeping, stop signals and the source of the first weights."""

    length: Length = dataclasses.field(default_factory=Length)
    log_every_steps: int = 20
    eval_every_steps: int = 0  # 0: once per epoch
    checkpoint_every_steps: int = 0  # 0: once per epoch
    keep_checkpoints: int = 3
    stop_signals: str = ""
    seed: int = 0
    prefetch: int = 2
    init_from: str = ""
    init_from_ema: bool = True
    reinit_head: bool = False


@dataclasses.dataclass(frozen=True)
class Input:
    """The data and its augmentation, read by ``train.input_pipeline``."""

    dataset: str = "digits"
    data_dir: str = ""
    manual_dir: str = ""
    classes: tuple[int, ...] = ()
    train_split: str = "train"
    eval_split: str = ""
    validation_examples: int = 0
    undecodable_limit: float = 0.01
    crop: augment.Crop = dataclasses.field(default_factory=augment.Crop)
    policy: policies.Policy | None = None
    erasing: erasing.RandomErasing | None = None
    repeated_augmentations: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    batch_size: int = 64
    eval_batch_size: int = 64
    input_workers: int = 0
    input_threads: int = 2
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Optim:
    """The optimizer and its schedule, built by ``train.optim``."""

    optimizer: str = "sgd"
    learning_rate: float = 0.1  # the peak, after the linear scaling rule (``peak_learning_rate``)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_biases: bool = False
    lr_schedule: str = "cosine"
    lr_min: float = 0.0
    warmup_epochs: float = 1.0
    warmup_start_factor: float = 0.0
    warmup_prefix: bool = True
    lr_unit: str = "step"
    lr_boundaries: tuple[int, ...] = ()
    lr_boundary_epochs: tuple[float, ...] = ()
    lr_decay_factor: float = 0.1
    grad_clip_norm: float = 0.0
    grad_accum_steps: int = 1
    freeze: str = ""
    freeze_batch_stats: bool = False
    head_lr_multiplier: float = 1.0
    backbone_lr_multiplier: float = 1.0
    layer_decay: float = 1.0


@dataclasses.dataclass(frozen=True)
class EmaRule:
    """The EMA as the config states it; ``train.steps.ema_schedule`` turns it into the
    compiled step's ``Ema`` once the run's length is known."""

    decay: float = 0.0  # 0: no EMA
    every: int = 1
    adjust: bool = False  # torchvision's decay adjustment
    copy_during_warmup: bool = False

    @property
    def enabled(self) -> bool:
        return self.decay > 0


@dataclasses.dataclass(frozen=True)
class Step:
    """What the compiled train and eval steps do (static in their programs)."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    label_smoothing: float = 0.0
    loss: str = "softmax"
    bce_threshold: float = 0.0
    mix: mixing.MixConfig = mixing.NO_MIXING
    ynnpack: bool = True
    float32_grad_reduction: bool = False


@dataclasses.dataclass(frozen=True)
class Settings:
    """The whole run, checked. ``config_json`` is the config as saved with each checkpoint."""

    model: Model
    run: Run
    input: Input
    optim: Optim
    step: Step
    ema: EmaRule
    config_json: str

    @property
    def batch_size(self) -> int:
        """The global batch, over all devices and processes."""
        return self.input.batch_size

    def describe_recipe(self) -> str:
        """One line: the recipe this run trains with."""
        crop, i = self.input.crop, self.input
        size = crop.train_image_size or crop.image_size
        parts = [f"crop {crop.augment}" + (f" {size}" if size else "")]
        parts.append(f"policy {i.policy.name if i.policy else 'none'}")
        parts.append(f"erasing {i.erasing.probability:g}" if i.erasing else "erasing off")
        parts.append(f"repeated augmentation x{i.repeated_augmentations}")
        mix = self.step.mix
        parts.append(
            f"mixup {mix.mixup_alpha:g} / cutmix {mix.cutmix_alpha:g} (p {mix.prob:g})"
            if mix.enabled
            else "no mixing"
        )
        bce = f" (targets > {self.step.bce_threshold:g})" if self.step.bce_threshold > 0 else ""
        parts.append(f"loss {self.step.loss}{bce}, label smoothing {self.step.label_smoothing:g}")
        parts.append(f"stochastic depth {self.model.drop_path_rate:g}")
        ema = self.ema
        adjusted = ", adjusted as torchvision" if ema.adjust else ""
        parts.append(f"EMA {ema.decay:g} every {ema.every} step(s){adjusted}" if ema.enabled else "no EMA")
        return "recipe: " + "; ".join(parts)


def _take(cls: type, config: Any, **computed: Any) -> Any:
    """``cls`` with each field read from the config field of the same name, except those
    ``computed`` here."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in computed]
    return cls(**{name: config[name] for name in names}, **computed)


def _positive(config: Any, *fields: str, minimum: int = 1) -> None:
    for field in fields:
        if config[field] < minimum:
            raise ValueError(f"config.{field}={config[field]} must be >= {minimum}")


def _probability(config: Any, *fields: str) -> None:
    for field in fields:
        if not 0.0 <= config[field] <= 1.0:
            raise ValueError(f"config.{field}={config[field]} is a probability: it must be in [0, 1]")


def _seed(config: Any) -> None:
    """The run's seed seeds grain's index shuffle and per-record generators, and JAX."""
    if not 0 <= config.seed < 2**32:
        raise ValueError(f"config.seed={config.seed} must be in [0, 2**32)")


def _floats(config: Any, field: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in config[field])
    except (TypeError, ValueError):
        raise ValueError(
            f"config.{field}={config[field]!r}: numbers, comma-separated on the command line "
            f"(e.g. --config.{field}=0.485,0.456,0.406)"
        ) from None


def _ints(config: Any, field: str, example: str) -> tuple[int, ...]:
    values = config[field]
    values = (values,) if isinstance(values, int | str) else values
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(
            f"config.{field}={config[field]!r}: whole numbers, comma-separated on the command line "
            f"(e.g. --config.{field}={example})"
        ) from None
    if any(float(v) != o for v, o in zip(values, out)):
        raise ValueError(f"config.{field}={config[field]!r}: whole numbers, e.g. {example}")
    return out


def model(config: Any) -> Model:
    if config.model not in resnet_jax.list_models():
        resnet_jax.create_model(config.model)  # raises, with close-name suggestions
    choice("dtype", config.dtype, DTYPES)
    _probability(config, "drop_rate", "drop_path_rate")
    return Model(config.model, config.dtype, config.drop_rate, config.drop_path_rate, config.zero_init_last)


def length(config: Any) -> Length:
    if config.num_train_steps == 0 or config.num_train_steps < -1:
        raise ValueError(
            f"config.num_train_steps={config.num_train_steps}: a number of steps > 0, or -1 (the default) "
            f"to take the length from num_epochs (now {config.num_epochs})"
        )
    if config.num_train_steps == -1 and config.num_epochs <= 0:
        raise ValueError(
            f"num_epochs={config.num_epochs} and num_train_steps={config.num_train_steps} give a run of 0 "
            "steps; set num_epochs > 0, or num_train_steps > 0 (which wins when both are set)"
        )
    return Length(float(config.num_epochs), int(config.num_train_steps))


def run(config: Any) -> Run:
    _positive(config, "log_every_steps", "keep_checkpoints")
    _positive(config, "eval_every_steps", "checkpoint_every_steps", "prefetch", minimum=0)
    preemption.parse(config.stop_signals)  # the seed is checked with the data, which it shuffles first
    return _take(Run, config, length=length(config), init_from=config.init_from.strip())


def crop(config: Any) -> augment.Crop:
    if config.augment not in augment.AUGMENTATIONS:
        hint = ""
        if config.augment in policies.POLICIES:
            hint = (
                f" ({config.augment!r} is a policy that follows the crop: set "
                f"--config.auto_augment={config.augment} with augment 'imagenet' or 'cifar')"
            )
        choices = ", ".join(augment.AUGMENTATIONS)
        raise ValueError(f"unknown augment {config.augment!r}; valid: {choices}{hint}")
    choice("interpolation", config.interpolation, augment.INTERPOLATIONS)
    _positive(config, "image_size", "train_image_size", "eval_resize_size", "crop_padding", minimum=0)
    if config.eval_resize_size and config.eval_resize_size < config.image_size:
        raise ValueError(
            f"config.eval_resize_size={config.eval_resize_size} is below image_size={config.image_size}: "
            "the centre crop would be padded"
        )
    if config.augment == "imagenet" and not config.image_size:
        raise ValueError("config.augment='imagenet' needs config.image_size > 0 (e.g. 224)")
    return augment.Crop(
        augment=config.augment,
        image_size=config.image_size,
        padding=config.crop_padding,
        train_antialias=config.train_antialias,
        interpolation=config.interpolation,
        train_image_size=config.train_image_size,
        eval_resize_size=config.eval_resize_size,
    )


def policy(config: Any, mean: tuple[float, ...]) -> policies.Policy | None:
    """``auto_augment``'s policy, or None. TrivialAugment and AutoAugment fill what they
    uncover with black (torchvision's default); RandAugment with the mean pixel (timm's);
    all resample with ``interpolation``, as torchvision's recipes and timm's factory do."""
    if not config.auto_augment:
        return None
    if config.auto_augment not in policies.POLICIES:
        raise ValueError(
            f"unknown auto_augment {config.auto_augment!r}; valid: '' (none), {', '.join(policies.POLICIES)}"
        )
    fill = (0,)
    if config.auto_augment == "randaugment":
        fill = tuple(min(255, round(255 * m)) for m in mean)
    return policies.Policy(
        config.auto_augment,
        interpolation=config.interpolation,
        fill=fill,
        num_ops=config.randaugment_num_ops,
        magnitude=config.randaugment_magnitude,
        magnitude_std=config.randaugment_magnitude_std,
    )


def random_erasing(
    config: Any, mean: tuple[float, ...], std: tuple[float, ...]
) -> erasing.RandomErasing | None:
    """``random_erasing``'s eraser, or None when its probability is 0 (its fields checked either way)."""
    eraser = erasing.RandomErasing(
        config.random_erasing,
        scale=_floats(config, "random_erasing_scale"),
        ratio=_floats(config, "random_erasing_ratio"),
        value=config.random_erasing_value,
        mean=mean,
        std=std,
    )
    return eraser if eraser.probability > 0 else None


def data(config: Any) -> Input:
    _positive(config, "batch_size", "input_threads", "repeated_augmentations")
    _positive(config, "input_workers", "eval_batch_size", "validation_examples", minimum=0)
    _seed(config)
    mean, std = _floats(config, "mean"), _floats(config, "std")
    if any(s <= 0 for s in std):
        raise ValueError(f"config.std={std} must be > 0 per channel")
    if not 0.0 <= config.undecodable_limit < 1.0:
        raise ValueError(
            f"config.undecodable_limit={config.undecodable_limit} must be in [0, 1): the share of a "
            "split's images that may fail to decode before the run stops"
        )
    return _take(
        Input,
        config,
        classes=_ints(config, "classes", "0,3,7"),
        crop=crop(config),
        policy=policy(config, mean),
        erasing=random_erasing(config, mean, std),
        mean=mean,
        std=std,
        eval_batch_size=config.eval_batch_size or config.batch_size,
    )


def peak_learning_rate(config: Any) -> float:
    """``learning_rate``, or with ``lr_base_batch_size`` > 0 the linear scaling rule of
    Goyal et al. 2017: ``learning_rate * batch_size / lr_base_batch_size``."""
    if config.lr_base_batch_size > 0:
        return config.learning_rate * config.batch_size / config.lr_base_batch_size
    return float(config.learning_rate)


def optim(config: Any) -> Optim:
    choice("optimizer", config.optimizer, OPTIMIZERS)
    choice("lr_schedule", config.lr_schedule, SCHEDULES)
    choice("lr_unit", config.lr_unit, LR_UNITS)
    _positive(config, "grad_accum_steps")
    _positive(config, "lr_base_batch_size", minimum=0)
    for field in ("learning_rate", "lr_min", "weight_decay", "momentum", "grad_clip_norm", "warmup_epochs"):
        if config[field] < 0:
            raise ValueError(f"config.{field}={config[field]} must be >= 0")
    if not 0.0 <= config.warmup_start_factor <= 1.0:
        raise ValueError(
            f"config.warmup_start_factor={config.warmup_start_factor} must be in [0, 1]: the warmup's "
            "first lr as a fraction of the peak (torchvision's --lr-warmup-decay)"
        )
    for field in ("head_lr_multiplier", "backbone_lr_multiplier"):
        if config[field] < 0:
            raise ValueError(f"config.{field}={config[field]} must be >= 0 (0: that part does not move)")
    if not 0.0 < config.layer_decay <= 1.0:
        raise ValueError(f"config.layer_decay={config.layer_decay} must be in (0, 1] (1: off)")
    return _take(
        Optim,
        config,
        learning_rate=peak_learning_rate(config),
        lr_boundaries=_ints(config, "lr_boundaries", "32000,48000"),
        lr_boundary_epochs=_floats(config, "lr_boundary_epochs"),
        freeze=config.freeze.strip(),
    )


def ema(config: Any) -> EmaRule:
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"config.ema_decay={config.ema_decay} must be in [0, 1) (0: no EMA)")
    _positive(config, "ema_every_steps")
    return EmaRule(config.ema_decay, config.ema_every_steps, config.ema_adjust, config.ema_copy_during_warmup)


def step(config: Any) -> Step:
    for field in ("mixup_alpha", "cutmix_alpha", "bce_threshold"):
        if config[field] < 0:
            raise ValueError(f"config.{field}={config[field]} must be >= 0 (0: off)")
    _probability(config, "mix_switch_prob", "mix_prob", "label_smoothing")
    choice("loss", config.loss, mixing.LOSSES)
    return Step(
        mean=_floats(config, "mean"),
        std=_floats(config, "std"),
        label_smoothing=config.label_smoothing,
        loss=config.loss,
        bce_threshold=config.bce_threshold,
        mix=mixing.MixConfig(
            config.mixup_alpha, config.cutmix_alpha, config.mix_switch_prob, config.mix_prob
        ),
        ynnpack=config.cpu_ynnpack,
        float32_grad_reduction=bool(config.float32_grad_reduction),
    )


def check(config: Any) -> Settings:
    """Every field of ``config`` checked, before any data is read or anything compiled.

    Raises ``ValueError`` naming the first wrong field, its value and what it takes.
    """
    unknown = sorted(set(config) - set(_default_fields()))
    if unknown:
        raise ValueError(f"config has fields the trainer does not know: {', '.join(unknown)}")
    return Settings(
        model=model(config),
        run=run(config),
        input=data(config),
        optim=optim(config),
        step=step(config),
        ema=ema(config),
        config_json=config.to_json_best_effort(),
    )


def check_init_from(settings: Settings) -> None:
    """Freezing only makes sense for weights that came from somewhere: a fresh run that
    freezes without ``init_from`` would train a head on random features."""
    o = settings.optim
    frozen = [f"freeze={o.freeze!r}"] if o.freeze else []
    frozen += ["freeze_batch_stats=True"] if o.freeze_batch_stats else []
    if frozen and not settings.run.init_from:
        raise ValueError(
            f"{' and '.join(frozen)} with no init_from would freeze randomly initialised weights. Set "
            "--config.init_from=SOURCE (a weights tag such as torchvision_v1, a `python -m "
            "resnet_jax.convert` directory or a workdir), or train every weight from a random init "
            "with --config.freeze='' --config.freeze_batch_stats=False"
        )


def _default_fields() -> list[str]:
    from train.configs import default

    return list(default.get_config())


def saved_config(settings: Settings) -> dict[str, Any]:
    """The config as a JSON object, as each checkpoint keeps it."""
    return json.loads(settings.config_json)
