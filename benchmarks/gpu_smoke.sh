#!/usr/bin/env bash
# First GPU check: gpt2_small trains end to end (cuDNN attention, bf16) on random tokens; prints tokens/s and MFU.
# Usage on a GPU machine: bash benchmarks/gpu_smoke.sh OUTDIR
set -uo pipefail
out=${1:-/tmp/lensjax_smoke}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
python3 -c "import numpy as np; np.random.default_rng(0).integers(0, 50257, size=8_000_000, dtype=np.uint16).tofile('/tmp/tokens.bin')"
common="--config.data.path=/tmp/tokens.bin --config.train.steps=60 --config.logging.log_every=20 --config.logging.eval_every=0 --config.checkpoint.save_every=100000 --config.logging.progress=lines"
for variant in "unrolled:" "scan:--config.model.scan_layers=true"; do
  name=${variant%%:*}; extra=${variant#*:}
  rm -rf /tmp/run_$name
  python3 -m lensjax train --config configs/gpt2_small.py --workdir /tmp/run_$name $common $extra 2>&1 | tee "$out/$name.log" | grep -v "^\s*$" | tail -8
  cp /tmp/run_$name/metrics.jsonl "$out/$name.metrics.jsonl" 2>/dev/null
done
