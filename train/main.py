r"""python -m train.main --config=train/configs/NAME.py --workdir=DIR [--config.FIELD=VALUE ...]

Parses flags and the config, joins a multi-host run when asked, and calls
``train_lib.train_and_evaluate``. With no flags it trains the offline default config
into ./runs/default. Run it from the repository root.

A mistake in the command (an unknown flag, config file or field, a bad value, missing
data, a refused resume) prints one ``error: ...`` line on stderr and exits with status 1;
an unexpected failure keeps its traceback (``resnet_jax.user_errors``; set RESNET_JAX_TRACEBACK=1
to see the traceback of a user error too). A run stopped by a signal saves the step it
reached and exits with status 75 (``train.preemption``); a finished run exits with 0.
"""

import glob
import os
import sys

# TensorFlow, if something imports it (a TFDS builder preparing a dataset), logs pages
# of CUDA and oneDNN notices at start-up; warnings and errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import user_errors

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
FLAGS = flags.FLAGS
_HELP = "python -m train.main --print_config lists every config field, its value and where it came from"


def define_config_flag() -> None:
    """``--config`` and its ``--config.FIELD`` overrides. Defined when a tool runs, not on
    import: ml_collections reads the overrides from the command line while defining
    ``--config``, and a misspelt field must reach the tool's error handling."""
    config_flags.DEFINE_config_file(
        "config", os.path.join(_CONFIGS, "default.py"), "A train/configs/*.py file.", lock_config=True
    )


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Checkpoints, metrics and plots go here (default: runs/CONFIG).")
    define_config_flag()
    flags.DEFINE_bool(
        "distributed",
        False,
        "Call jax.distributed.initialize() with its auto-detection (SLURM, TPU pods, Open MPI).",
    )
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host runs.")
    flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
    flags.DEFINE_bool(
        "print_config",
        False,
        "Print the resolved, checked config (every field, its value, and whether it came from the "
        "defaults, the config file or the command line) and exit without training.",
    )


def load_config():
    """The config file with the command line's overrides, and its path."""
    path = FLAGS["config"].config_filename
    file = path.split(":", 1)[0]
    if not os.path.isfile(file):
        known = sorted(os.path.relpath(p) for p in glob.glob(os.path.join(_CONFIGS, "*.py")))
        raise ValueError(
            f"config file --config={path} not found (from {os.getcwd()}); the configs are: "
            f"{', '.join(k for k in known if not k.endswith('__init__.py'))}"
        )
    config = FLAGS.config
    apply_duration_rule(config, overridden())
    return config, path


def overridden() -> set[str]:
    """The config fields the command line set."""
    return {name.split(".", 1)[1] for name in FLAGS if name.startswith("config.") and FLAGS[name].present}


def config_table(config, overridden: set[str]) -> str:
    """Every field of ``config``: its value, and where the value came from: ``default``
    (``train/configs/default.py``), ``file`` (the --config file changed it) or ``command
    line``."""
    from train.configs import default

    defaults = default.get_config()
    rows = []
    for field in sorted(config):
        value = config[field]
        if field in overridden:
            origin = "command line"
        elif field not in defaults or defaults[field] != value:
            origin = "file"
        else:
            origin = "default"
        rows.append((field, repr(tuple(value) if isinstance(value, list) else value), origin))
    width = max(len(r[0]) for r in rows)
    value_width = min(48, max(len(r[1]) for r in rows))
    return "\n".join(f"{f:{width}}  {v:{value_width}}  {o}" for f, v, o in rows)


def apply_duration_rule(config, overridden: set[str]) -> None:
    """``num_train_steps`` > 0 sets the length of a run, else ``num_epochs``; a length given
    on the command line always wins, and the line says which it replaced:
    ``--config.num_epochs=2`` clears a config file's ``num_train_steps``, and
    ``--config.num_train_steps=N`` replaces its ``num_epochs``. Giving both on the command
    line is an error."""
    if {"num_epochs", "num_train_steps"} <= overridden:
        if config.num_train_steps > 0 and config.num_epochs > 0:
            raise ValueError(
                f"--config.num_epochs={config.num_epochs} and --config.num_train_steps="
                f"{config.num_train_steps} both set the run's length; give one of them"
            )
    elif "num_epochs" in overridden and config.num_train_steps > 0:
        print(
            f"num_epochs={config.num_epochs} from the command line replaces the config file's "
            f"num_train_steps={config.num_train_steps}",
            flush=True,
        )
        config.num_train_steps = -1
    elif "num_train_steps" in overridden and config.num_train_steps > 0:
        print(
            f"num_train_steps={config.num_train_steps} from the command line replaces the config "
            f"file's num_epochs={config.num_epochs}",
            flush=True,
        )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Imported here so that --help stays fast.
    import jax

    from train import preemption, train_lib

    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    config, config_path = load_config()
    if FLAGS.print_config:
        from train import settings

        settings.check(config)  # the same single check a run makes: a bad value is one error line
        print(f"config {config_path}, checked:\n{config_table(config, overridden())}")
        return
    if FLAGS.coordinator_address or FLAGS.distributed:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
    workdir = FLAGS.workdir or os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])
    logging.info("process %d of %d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
    if jax.process_index() == 0:
        print(f"config {config_path}; writing to {os.path.abspath(workdir)}", flush=True)
    preemption.StopSignals.keep_after_stop = True  # this process exits once it has saved
    try:
        train_lib.train_and_evaluate(config, workdir)
    except preemption.Stopped as stopped:
        if jax.process_index() == 0:
            print(stopped.line(), flush=True)
        sys.exit(preemption.EXIT_CODE)
    finally:  # read only as a stop's handlers are put back, inside the call above
        preemption.StopSignals.keep_after_stop = False


def parse_flags(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        user_errors.fail(f"{e} ({_HELP})")


def field_error(error: BaseException) -> str:
    """ml_collections' message for a misspelt --config.FIELD, without its quoting."""
    while (
        isinstance(error, (AttributeError, KeyError))
        and error.args
        and isinstance(error.args[0], BaseException)
    ):
        error = error.args[0]
    text = str(error.args[0]) if error.args else str(error)
    name, _, hint = text.partition("\n")
    return f"--config.{name.strip(chr(39))} is not a field of the config; {hint.strip() or _HELP}"


def run() -> None:
    try:
        _define_flags()
    except (AttributeError, KeyError) as e:
        user_errors.fail(field_error(e))
    try:
        app.run(main, flags_parser=parse_flags)
    except Exception as e:
        if not user_errors.is_user_error(e):
            raise
        user_errors.fail(str(e))


if __name__ == "__main__":
    run()
