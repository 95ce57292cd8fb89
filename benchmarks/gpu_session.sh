#!/usr/bin/env bash
# One GPU lease for several measurements (each script below also runs on its own):
#   1. lensjax bench on gpt2_small (plain and logging step, fused chunked loss);
#   2. the norm-growth grid for one norm placement (x + LN(f(x))), all 16 members at once, shortened to
#      NORM_STEPS within NORM_S seconds (needs data/shakespeare_kjv from scripts/fetch_corpus.sh);
#   3. the entropy ladder and FFN ablation (shortened: STEPS).
# Usage: bash benchmarks/gpu_session.sh OUTDIR   (everything lands in OUTDIR/session.tar.gz)
set -uo pipefail
dest=${1:-/tmp/lensjax_session_out}
out=/tmp/lensjax_session
rm -rf "$out"; mkdir -p "$dest" "$out"/bench "$out"/norm "$out"/entropy
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
start=$SECONDS
python3 -c "import numpy as np; np.random.default_rng(0).integers(0, 50257, size=4_000_000, dtype=np.uint16).tofile('/tmp/tokens.bin')"
python3 -m lensjax bench --config configs/gpt2_small.py --config.data.path=/tmp/tokens.bin --steps 20 2>&1 | tee "$out/bench/bench_gpt2_small.txt" | tail -4
echo "[$((SECONDS - start)) s] bench done"
DEADLINE_S=${NORM_S:-300} EXTRA="--config.train.steps=${NORM_STEPS:-1000}" \
  bash benchmarks/gpu_norm_growth.sh "$out/norm" "branch branch" > "$out/norm/stdout.txt" 2>&1
echo "[$((SECONDS - start)) s] norm growth done"; tail -12 "$out/norm/norm_growth_log.txt"
STEPS=${ENTROPY_STEPS:-800} LADDER_S=${LADDER_S:-150} ABLATION_S=${ABLATION_S:-100} bash benchmarks/gpu_entropy.sh "$out/entropy" > "$out/entropy/stdout.txt" 2>&1
echo "[$((SECONDS - start)) s] entropy done"; tail -15 "$out/entropy/stdout.txt"
tar czf "$dest/session.tar.gz" -C "$out" .
echo "[$((SECONDS - start)) s] wrote $dest/session.tar.gz"
