r"""python -m train.main --config=train/configs/NAME.py --workdir=DIR [--config.FIELD=VALUE ...]

Parses flags and the config, joins a multi-host run when asked, and calls
``train_lib.train_and_evaluate``. With no flags it trains the offline default config
into ./runs/default.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, metrics and plots go here (default: runs/CONFIG)."
)
config_flags.DEFINE_config_file(
    "config", os.path.join(_CONFIGS, "default.py"), "A train/configs/*.py file.", lock_config=True
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() with its auto-detection (SLURM, TPU pods, Open MPI).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-host runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Imported here so that --help stays fast.
    import jax

    from train import train_lib

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    if _COORDINATOR.value or _DISTRIBUTED.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    config_path = flags.FLAGS["config"].config_filename
    workdir = _WORKDIR.value or os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])
    logging.info("process %d of %d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
    if jax.process_index() == 0:
        print(f"config {config_path}; writing to {os.path.abspath(workdir)}", flush=True)
    train_lib.train_and_evaluate(flags.FLAGS.config, workdir)


if __name__ == "__main__":
    app.run(main)
