#!/usr/bin/env bash
# On one GPU (about 8 minutes on an H100): Ren & Liu 2025's low-entropy experiment.
#   1. benchmark: exact enumeration of 2^20 sequences (V=4, T=10) through a ~1M-parameter model;
#   2. configs/entropy_ladder.py: six model sizes (0.1M..14M) on an order-2 Markov target, exact H(Q), H(P), KL;
#   3. configs/ffn_ablation.py: full vs attention-only vs FFN-only, and FFN widths 32..2048 at fixed attention.
# Usage: bash benchmarks/gpu_entropy.sh OUTDIR      (STEPS=N to change the training steps, default 2000)
# OUTDIR receives six files: bench_enumeration.json, ladder.json, ablation.json (one record per member:
# entropy.json + the last logged sparsity/bypass metrics), ladder.log, ablation.log, env.txt.
# Each sweep runs under a time limit; on reaching it the member in training saves a checkpoint and the sweep
# stops, keeping every finished member (running this script again resumes where it stopped).
set -uo pipefail
out=${1:-/tmp/lensjax_entropy}
steps=${STEPS:-2000}
runs=${RUNS:-/tmp/lensjax_entropy_runs}
mkdir -p "$out" "$runs"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# The ablation's "full" member is the ladder's L4_D128: its compiled steps come from this cache.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/lensjax_jax_cache}
start=$SECONDS

python3 -m lensjax sweep --help > /dev/null 2>&1 || { echo "lensjax sweep is not registered in lensjax/cli.py"; exit 2; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} > "$out/env.txt" 2>&1

# 1. The enumeration benchmark (target: < 10 s for the 2^20 sequences on an H100).
python3 - "$out/bench_enumeration.json" <<'EOF'
import json, sys, time
import jax, jax.numpy as jnp
from lensjax.analysis.entropy import SequenceEntropy, chunk_size
from lensjax.config import ModelConfig
from lensjax.data.targets import MarkovTarget
from lensjax.model import Transformer, count_params

V, T = 4, 10
cfg = ModelConfig(num_layers=4, d_model=144, num_heads=4, d_ff=576, vocab_size=V, max_len=16)
params = jax.jit(Transformer(cfg).init)(jax.random.PRNGKey(0), jnp.zeros((1, T), jnp.int32))["params"]
evaluator = SequenceEntropy(cfg, MarkovTarget(V, 2, 0.5, T, 0, initial="stationary"))
record = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "params": count_params(params),
          "sequences": V**T, "seq_len": T, "chunk": chunk_size(cfg, V, T, V**T)}
for name, with_target in (("model_only", False), ("model_and_target_with_kl", True)):
  start = time.perf_counter()
  result = evaluator.exact(params, with_target=with_target)
  first = time.perf_counter() - start
  times = []
  for _ in range(3):
    start = time.perf_counter()
    result = evaluator.exact(params, with_target=with_target)
    times.append(time.perf_counter() - start)
  median = sorted(times)[1]
  record[name] = {"first_call_s_with_compile": first, "median_s": median, "sequences_per_s": V**T / median,
                  "forward_tflops_per_s": 2 * record["params"] * T * V**T / median / 1e12,
                  "entropy_model_seq": result["entropy_model"], "model_mass": result["model_mass"]}
print(json.dumps(record))
json.dump(record, open(sys.argv[1], "w"), indent=2)
EOF
echo "benchmark done at $((SECONDS - start)) s"

# 2 and 3. The sweeps, each under a time limit (SIGTERM: checkpoint, then the sweep stops). Held-out evaluation
# is off: the training data are fresh draws of the target, and it would cost two more compilations per member.
run_sweep() {  # name config seconds
  timeout -k 30 -s TERM "$3" python3 -m lensjax sweep --config "$2" --workdir "$runs/$1" \
    --config.train.steps="$steps" --config.logging.eval_every=0 --config.logging.progress=lines \
    > "$runs/$1.log" 2>&1
  echo "$1: exit $? at $((SECONDS - start)) s"
  tail -n 400 "$runs/$1.log" > "$out/$1.log"
}
run_sweep ladder configs/entropy_ladder.py "${LADDER_S:-270}"
run_sweep ablation configs/ffn_ablation.py "${ABLATION_S:-190}"

# One JSON per sweep: each member's entropy.json and its last logged FFN activity, dead units, attention bypass.
python3 - "$runs" "$out" <<'EOF'
import json, os, sys
from lensjax.io.metrics_log import read_metrics
runs, out = sys.argv[1:]
PREFIXES = ("ffn/active_token/", "ffn/active_seq/", "ffn/dead/", "attn/bypass/")
for sweep in ("ladder", "ablation"):
  path = os.path.join(runs, sweep, "sweep_summary.json")
  members = json.load(open(path)) if os.path.exists(path) else []
  for member in members:
    records = read_metrics(os.path.join(runs, sweep, member["name"], "metrics.jsonl"))
    last = next((r for r in reversed(records) if "train/loss" in r), {})
    member["last_train_record"] = {k: v for k, v in last.items() if k == "step" or k.startswith(PREFIXES)}
  json.dump(members, open(os.path.join(out, f"{sweep}.json"), "w"), indent=1, default=float)
  print(f"{sweep}: {len(members)} members")
  for m in members:
    print(f"  {m['name']:<16} {m['num_params']:>10,} params  H(P) {m['eval/entropy_target_seq']:.4f}  "
          f"H(Q) {m['eval/entropy_model_seq']:.4f}  gap {m['entropy_gap_seq']:+.4f}  KL {m['eval/kl_seq']:.4f}")
EOF
echo "total $((SECONDS - start)) s"
