"""The config is checked once (train/settings.py): every mistake is one ValueError from
``settings.check`` naming the field and what it takes, before any data is read."""

import pathlib

import pytest

from train import main, settings
from train.configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]

# (field, a wrong value, what the message must say): one row per kind of mistake.
MISTAKES = [
    ("num_train_steps", 0, r"config.num_train_steps=0: a number of steps > 0, or -1"),
    ("num_epochs", 0.0, r"num_epochs=0.0 and num_train_steps=-1 give a run of 0 steps"),
    ("classes", ("abc",), r"config.classes=\('abc',\): whole numbers, comma-separated"),
    ("classes", (1.5,), r"config.classes=\(1.5,\): whole numbers"),
    ("optimizer", "adagrad", r"unknown optimizer 'adagrad'; valid: sgd, nesterov, adam, adamw, lars, lamb"),
    ("lr_schedule", "linear", r"unknown lr_schedule 'linear'; valid: cosine, piecewise, constant"),
    ("dtype", "float16", r"unknown dtype 'float16'; valid: float32, bfloat16"),
    ("model", "resnet21", r"unknown model 'resnet21'.*did you mean"),
    ("augment", "flip", r"unknown augment 'flip'; valid: none, cifar, imagenet"),
    ("interpolation", "lanczos", r"unknown interpolation 'lanczos'; valid: bilinear, bicubic"),
    ("auto_augment", "ta_wide", r"unknown auto_augment 'ta_wide'; valid: '' \(none\)"),
    ("loss", "focal", r"unknown loss 'focal'; valid: softmax, bce"),
    ("batch_size", 0, r"config.batch_size=0 must be >= 1"),
    ("eval_every_steps", -1, r"config.eval_every_steps=-1 must be >= 0"),
    ("mix_prob", 1.5, r"config.mix_prob=1.5 is a probability: it must be in \[0, 1\]"),
    ("label_smoothing", -0.1, r"config.label_smoothing=-0.1 is a probability"),
    ("ema_decay", 1.0, r"config.ema_decay=1.0 must be in \[0, 1\)"),
    ("mean", ("a",), r"config.mean=\('a',\): numbers"),
    ("std", (0.0,), r"config.std=\(0.0,\) must be > 0"),
    ("layer_decay", 0.0, r"config.layer_decay=0.0 must be in \(0, 1\]"),
    ("seed", -1, r"config.seed=-1 must be in \[0, 2\*\*32\)"),
    ("stop_signals", "SIGKILL", r"config.stop_signals names 'SIGKILL', which cannot be caught"),
    ("eval_resize_size", 16, r"config.eval_resize_size=16 is below image_size=32"),
    ("random_erasing_value", "noise", r"random_erasing_value='noise'; valid: '0', 'random'"),
]


@pytest.mark.parametrize("field,value,match", MISTAKES, ids=[f"{m[0]}={m[1]!r}" for m in MISTAKES])
def test_each_mistake_is_named_by_the_single_check(field, value, match):
    config = default.get_config()
    config[field] = value
    if field == "eval_resize_size":
        config.update(image_size=32, augment="imagenet")
    with pytest.raises(ValueError, match=match) as raised:
        settings.check(config)
    assert field in str(raised.value)


def test_every_preset_passes_the_check_and_the_parts_hold_its_values():
    for path in sorted((REPO / "train" / "configs").glob("*.py")):
        if path.name.startswith("_") or path.stem == "linear_probe":
            continue
        module = __import__(f"train.configs.{path.stem}", fromlist=["get_config"])
        config = module.get_config()
        checked = settings.check(config)
        assert checked.optim.optimizer == config.optimizer and checked.input.crop.augment == config.augment
        assert checked.step.mix.mixup_alpha == config.mixup_alpha and checked.ema.decay == config.ema_decay


def test_no_module_of_the_trainer_reads_a_field_with_a_default_of_its_own():
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for path in (REPO / "train").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "getattr(config" in line
    ]
    assert found == []


def test_the_run_says_its_recipe_and_a_length_from_the_command_line_says_what_it_replaced(capsys):
    from train.configs import cifar10_tv2

    line = settings.check(cifar10_tv2.get_config()).describe_recipe()
    for part in (
        "policy trivialaugment",
        "erasing 0.1",
        "mixup 0.2 / cutmix 1",
        "label smoothing 0.1",
        "EMA",
    ):
        assert part in line, line
    config = cifar10_tv2.get_config()
    config.num_train_steps = 7  # as --config.num_train_steps=7 sets it
    main.apply_duration_rule(config, {"num_train_steps"})
    assert (
        f"num_train_steps=7 from the command line replaces the config file's num_epochs={config.num_epochs}"
        in (capsys.readouterr().out)
    )
    assert settings.check(config).run.length.total_steps(100) == 7


def test_print_config_lists_every_field_with_its_value_and_origin():
    from train.configs import cifar10

    config = cifar10.get_config()
    config.seed = 3  # as --config.seed=3 sets it
    rows = {line.split()[0]: line for line in main.config_table(config, {"seed"}).splitlines()}
    assert set(rows) == set(default.get_config())
    assert rows["seed"].split()[1:] == ["3", "command", "line"]
    assert rows["num_train_steps"].split()[1:] == ["64000", "file"]
    assert rows["dtype"].split()[1:] == ["'float32'", "default"]
