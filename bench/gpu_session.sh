#!/usr/bin/env bash
# One device call's worth of GPU figures (BENCHMARKS.md, "On a GPU"), each part under its own
# deadline so that the call ends inside its limit with whatever was measured:
#   1. the converted ResNet-50 against torchvision on the GPU (float32, TF32 off);
#   2. ResNet-50 training at 224, batch 256, bf16: resnet_jax against torchvision eager and
#      torch.compile (channels_last, bf16 autocast) in the same process;
#   3. the trainer with the cifar10_tv2 preset for a few hundred steps on the CIFAR-10 JPEGs;
#   4. He et al.'s ResNet-20 recipe, its schedule compressed to HE_STEPS (boundaries at 1/2
#      and 3/4, as the paper's 32k/48k of 64k), for the time left.
# Run from the repository root, with the wheels of bench/gpu_wheels.txt in .whl and the
# CIFAR-10 archive in .data; everything lands in $OUT (or ./runs/gpu without one).
#   bash bench/gpu_session.sh [TOTAL_SECONDS]
set -u
TOTAL=${1:-560}
OUT=${OUT:-runs/gpu}
HE_STEPS=${HE_STEPS:-8000}
mkdir -p "$OUT" runs
export PYTHONUNBUFFERED=1
# JAX and torch share the GPU in parts 1-2: JAX takes half, not its default 75%.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    python3 -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda[0-9]+-(plugin|pjrt)|flax|optax|orbax-checkpoint|chex|torch|torchvision|numpy) '
    python3 -c 'import grain, ml_collections; print("grain", grain.__version__ if hasattr(grain, "__version__") else "?")'
} 2>&1 | tee "$OUT/env.txt"

ACCEL="python3 -m bench.accelerator --out=runs/accel --cifar-archive=.data/cifar10-jpeg.tar.gz"
left() { echo $((TOTAL - SECONDS)); }
save() { cp runs/accel/results.json "$OUT/" 2>/dev/null; }

timeout 120 $ACCEL --parts=parity 2>&1 | tee "$OUT/parity.log"; save
timeout 300 $ACCEL --parts=resnet50 --dtypes=bfloat16 2>&1 | tee "$OUT/resnet50.log"; save
budget=$(( $(left) < 150 ? $(left) - 20 : 130 ))
if [ "$budget" -gt 40 ]; then
    timeout $((budget + 70)) $ACCEL --parts=trainer --trainer-config=train/configs/cifar10_tv2.py \
        --trainer-budget-s=$budget --trainer-flag=--config.num_train_steps=300 \
        --trainer-flag=--config.warmup_epochs=0.25 2>&1 | tee "$OUT/tv2.log"; save
fi
budget=$(( $(left) - 70 ))
if [ "$budget" -gt 60 ]; then
    timeout $((budget + 65)) $ACCEL --parts=trainer --trainer-config=train/configs/cifar10.py \
        --trainer-budget-s=$budget --trainer-flag=--config.num_train_steps=$HE_STEPS \
        --trainer-flag=--config.lr_boundaries=$((HE_STEPS / 2)),$((HE_STEPS * 3 / 4)) \
        --trainer-flag=--config.eval_every_steps=$((HE_STEPS / 4)) \
        --trainer-flag=--config.checkpoint_every_steps=$((HE_STEPS / 4)) 2>&1 | tee "$OUT/he.log"; save
fi
cp runs/accel/cifar10_run/metrics.jsonl "$OUT/he_metrics.jsonl" 2>/dev/null
cp runs/accel/cifar10_tv2_run/summary.json "$OUT/tv2_summary.json" 2>/dev/null
echo "gpu_session: ${SECONDS}s"
