#!/usr/bin/env bash
# On a GPU machine: the runs of docs/results/norm_growth.md (Merrill et al. 2021, configs/norm_growth.py). Each RUN
# is one `lensjax train` of the configured 16-member ensemble (learning rate x weight decay x 2 seeds), given
# as one quoted word "NAME NORM [--config.KEY=VALUE ...]" with NORM one of pre, post, branch; after it,
# benchmarks/norm_growth_analyses.py computes every member's saturation at initialisation and at its final
# checkpoint under both attention masks, with the homogeneity check. Runs go one after another; each gets
# what is left of DEADLINE_S (minus ANALYSIS_S for its analyses) as its training limit, after which the
# trainer is sent SIGTERM, saves a checkpoint and stops, so a long run still brings back its first steps.
# A run is skipped once less than MIN_TRAIN_S is left.
# Per run, in OUTDIR: norm_growth_NAME.tar.xz (member_<i>/config.json and metrics.jsonl, analyses.json,
# train.log) and the shared log norm_growth_log.txt. Unpack with
#   python3 benchmarks/norm_growth_summary.py --unpack OUTDIR/norm_growth_*.tar.xz RAW_DIR
# Usage: bash benchmarks/gpu_norm_growth.sh OUTDIR RUN...
#   e.g. bash benchmarks/gpu_norm_growth.sh /tmp/out "branch branch" "post post --config.optim.warmup_steps=500"
#   env: DEADLINE_S (540), ANALYSIS_S (90), MIN_TRAIN_S (60), EXTRA (more --config.KEY=VALUE for every run),
#        ANALYSES (1; 0: train only, e.g. for the short probes that choose a warm-up),
#        PYTHON (python3), RUNS (/tmp/norm_growth_runs)
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_norm_growth.sh OUTDIR RUN...}
shift
[ $# -gt 0 ] || { echo "gpu_norm_growth.sh: name at least one RUN, e.g. \"branch branch\"" >&2; exit 2; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
runs=${RUNS:-/tmp/norm_growth_runs}
deadline=${DEADLINE_S:-540}
analyses=${ANALYSES:-1}
analysis_s=${ANALYSIS_S:-90}
[ "$analyses" = 1 ] || analysis_s=0
min_train=${MIN_TRAIN_S:-60}
extra=${EXTRA:-}
mkdir -p "$out" "$runs"
start=$SECONDS
log="$out/norm_growth_log.txt"
say() { echo "[$((SECONDS - start)) s] $*" | tee -a "$log"; }
say "$("$py" -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tail -1)"
for spec in "$@"; do
  read -r name norm overrides <<< "$spec"
  run="$runs/$name"
  limit=$((deadline - (SECONDS - start) - analysis_s))
  if [ "$limit" -lt "$min_train" ]; then
    say "$name: skipped, ${limit} s left for training (MIN_TRAIN_S=$min_train)"
    continue
  fi
  rm -rf "$run"
  say "$name: norm $norm $overrides, training for at most $limit s"
  # shellcheck disable=SC2086
  timeout --signal=TERM --kill-after=60 "$limit" "$py" -m lensjax train --config configs/norm_growth.py \
    --workdir "$run" --config.model.norm="$norm" --config.logging.progress=lines $overrides $extra 2>&1 \
    | grep --line-buffered -v "^WARNING\|^I1\|^W1\|^E1" | tee "$out/train_$name.log"
  code=${PIPESTATUS[0]}
  say "$name: train exit $code after $((SECONDS - start)) s"
  if [ "$analyses" = 1 ]; then
    "$py" benchmarks/norm_growth_analyses.py "$run" "$run/analyses.json" 2>&1 \
      | grep --line-buffered -v "^WARNING\|^I1\|^W1\|^E1" | tee "$out/analyses_$name.log"
    say "$name: analyses exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
  fi
  cp "$out/train_$name.log" "$run/train.log"
  (cd "$run" && tar cJf "$out/norm_growth_$name.tar.xz" member_*/config.json member_*/metrics.jsonl train.log \
    $( [ -f analyses.json ] && echo analyses.json ) 2>/dev/null)
  rm -f "$out/train_$name.log"
  say "$name: packed $(du -h "$out/norm_growth_$name.tar.xz" | cut -f1)"
done
say "done"
