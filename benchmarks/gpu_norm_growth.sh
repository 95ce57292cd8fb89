#!/usr/bin/env bash
# On a GPU machine: the runs of docs/results/norm_growth.md (Merrill et al. 2021, configs/norm_growth.py). Each RUN
# is one `lensjax train` of the configured 16-member ensemble (learning rate x weight decay x 2 seeds), given
# as one quoted word "NAME NORM [--config.KEY=VALUE ...]" with NORM one of pre, post, branch; after it,
# benchmarks/norm_growth_analyses.py computes every member's saturation at initialisation and at its final
# checkpoint under both attention masks, with the homogeneity check.
#
# A run goes through stages, each recorded by a marker file in its directory, so that a run too long for one
# call continues in the next call on the same machine (RUNS must then survive between calls: the default is the
# ignored runs/ folder of the work tree):
#   train     the trainer gets what is left of DEADLINE_S (minus ANALYSIS_S when analyses follow) as its limit,
#             after which it is sent SIGTERM, saves a checkpoint and stops; the next call resumes it from there.
#             Marker .trained once it exits 0 (the configured steps are done).
#   analyses  only on a trained run and when ANALYSIS_S is still left; marker .analysed.
#   pack      every call packs what the run holds so far into OUTDIR/norm_growth_NAME.tar.xz; once analysed, the
#             checkpoints (8.5 GB per 16-member ensemble) are deleted to keep the disk free for the next run.
# A stage is skipped when less than MIN_TRAIN_S (training) or ANALYSIS_S (analyses) is left; a fresh run
# directory is started only when RESUME=0 or none exists.
# In OUTDIR: norm_growth_NAME.tar.xz (member_<i>/config.json and metrics.jsonl, analyses.json, train logs)
# and the shared log norm_growth_log.txt. Unpack with
#   python3 benchmarks/norm_growth_summary.py --unpack OUTDIR/norm_growth_*.tar.xz RAW_DIR
# Usage: bash benchmarks/gpu_norm_growth.sh OUTDIR RUN...
#   e.g. bash benchmarks/gpu_norm_growth.sh /tmp/out "branch branch" "post post --config.optim.warmup_steps=500"
#   A RUN's own overrides come after EXTRA's (they win); the word --no-analyses among them makes it train only
#   (the short probes that choose a warm-up).
#   env: DEADLINE_S (540), ANALYSIS_S (120), MIN_TRAIN_S (60), EXTRA (more --config.KEY=VALUE for every run),
#        ANALYSES (1; 0: no run gets analyses),
#        RESUME (1; 0: start every run afresh), PYTHON (python3), RUNS (runs/norm_growth)
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_norm_growth.sh OUTDIR RUN...}
shift
[ $# -gt 0 ] || { echo "gpu_norm_growth.sh: name at least one RUN, e.g. \"branch branch\"" >&2; exit 2; }
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
runs=${RUNS:-runs/norm_growth}
deadline=${DEADLINE_S:-540}
analyses=${ANALYSES:-1}
analysis_s=${ANALYSIS_S:-120}
[ "$analyses" = 1 ] || analysis_s=0
min_train=${MIN_TRAIN_S:-60}
resume=${RESUME:-1}
extra=${EXTRA:-}
mkdir -p "$out" "$runs"
start=$SECONDS
log="$out/norm_growth_log.txt"
say() { echo "[$((SECONDS - start)) s] $*" | tee -a "$log"; }
left() { echo $((deadline - (SECONDS - start))); }
quiet() { grep --line-buffered -v "^WARNING\|^I1\|^W1\|^E1"; }
say "$("$py" -c 'import jax; print("jax", jax.__version__, jax.devices())' 2>&1 | tail -1); runs in $runs"
for spec in "$@"; do
  read -r name norm overrides <<< "$spec"
  run="$runs/$name"
  run_analyses=$analyses
  if [[ " $overrides " == *" --no-analyses "* ]]; then
    run_analyses=0; overrides=${overrides//--no-analyses/}
  fi
  if [ "$resume" != 1 ] || [ ! -d "$run" ]; then
    rm -rf "$run"; mkdir -p "$run"
  fi
  if [ ! -f "$run/.trained" ]; then
    limit=$(left)
    [ "$run_analyses" = 1 ] && limit=$((limit - analysis_s))
    if [ "$limit" -lt "$min_train" ]; then
      say "$name: training skipped, ${limit} s left for it (MIN_TRAIN_S=$min_train)"
    else
      part=$(ls "$run"/train_*.log 2>/dev/null | wc -l)
      say "$name: norm $norm $overrides, training (part $part) for at most $limit s"
      # shellcheck disable=SC2086
      timeout --signal=TERM --kill-after=90 "$limit" "$py" -m lensjax train --config configs/norm_growth.py \
        --workdir "$run" --config.model.norm="$norm" --config.logging.progress=lines $extra $overrides 2>&1 \
        | quiet | tee "$run/train_$part.log"
      code=${PIPESTATUS[0]}
      say "$name: train exit $code after $((SECONDS - start)) s"
      [ "$code" = 0 ] && touch "$run/.trained"
    fi
  fi
  if [ "$run_analyses" = 1 ] && [ -f "$run/.trained" ] && [ ! -f "$run/.analysed" ]; then
    if [ "$(left)" -lt "$analysis_s" ]; then
      say "$name: analyses skipped, $(left) s left (ANALYSIS_S=$analysis_s)"
    else
      timeout --signal=KILL "$(left)" "$py" benchmarks/norm_growth_analyses.py "$run" "$run/analyses.json" 2>&1 \
        | quiet | tee "$run/analyses.log"
      code=${PIPESTATUS[0]}
      say "$name: analyses exit $code after $((SECONDS - start)) s"
      [ "$code" = 0 ] && touch "$run/.analysed"
    fi
  fi
  (cd "$run" && tar cJf "$out/norm_growth_$name.tar.xz" member_*/config.json member_*/metrics.jsonl train_*.log \
    $(ls analyses.json analyses.log 2>/dev/null) 2>/dev/null)
  say "$name: packed $(du -h "$out/norm_growth_$name.tar.xz" | cut -f1)$([ -f "$run/.trained" ] && echo ", trained")$([ -f "$run/.analysed" ] && echo ", analysed")"
  if [ -f "$run/.analysed" ] || [ "$run_analyses" != 1 ] && [ -f "$run/.trained" ]; then
    rm -rf "$run"/member_*/checkpoints
  fi
done
say "done"
