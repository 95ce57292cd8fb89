#!/usr/bin/env bash
# On a GPU machine: (1) the logging-step overhead on gpt2_small, (2) the layer-sparsity experiment.
# Usage: bash benchmarks/gpu_lenses.sh OUTDIR
set -uo pipefail
out=${1:-/tmp/lensjax_lenses}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
python3 -c "import numpy as np; np.random.default_rng(0).integers(0, 50257, size=4_000_000, dtype=np.uint16).tofile('/tmp/tokens.bin')"
python3 -m lensjax bench --config configs/gpt2_small.py --config.data.path=/tmp/tokens.bin --steps 30 2>&1 | tee "$out/bench_gpt2_small.txt"
rm -rf /tmp/layer_sparsity
python3 -m lensjax train --config configs/layer_sparsity_pilot.py --workdir /tmp/layer_sparsity --config.logging.progress=lines 2>&1 | grep -v "^\s" | tail -6
cp /tmp/layer_sparsity/metrics.jsonl "$out/layer_sparsity.metrics.jsonl"
cp /tmp/layer_sparsity/neuron_events.jsonl "$out/layer_sparsity.neuron_events.jsonl"
cp /tmp/layer_sparsity/config.json "$out/layer_sparsity.config.json"
