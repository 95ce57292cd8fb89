#!/usr/bin/env bash
# On a GPU machine: the layer-sparsity experiment of docs/results/layer_sparsity.md. For each FFN width,
# one ensemble of three seeds (configs/layer_sparsity.py), then `lensjax deaths` on every member.
# Each member lands in OUTDIR as one archive, layer_sparsity_dff<F>_member_<i>.tar.xz, holding member_<i>/
# config.json, metrics.jsonl, neuron_events.jsonl, deaths.json, deaths_extract.npz and the last step's unit
# trace; the train and deaths logs are beside them (train_dff<F>.log, deaths_dff<F>.log). Unpack them into the
# page's raw folders with `python3 benchmarks/layer_sparsity_figures.py --unpack ARCHIVE... RAW_DIR`.
# Usage: bash benchmarks/gpu_layer_sparsity.sh OUTDIR [D_FF ...]   (default widths: 2048 8192 32768)
#   env: EXTRA (more --config.KEY=VALUE for every run), PYTHON (python3), RUNS (/tmp/layer_sparsity_runs),
#        TRAIN_TIMEOUT (seconds; 0 = none: after it the trainer gets SIGTERM, saves a checkpoint and stops,
#        and the width is left for a second call), RESUME (1: continue an existing run directory instead of
#        starting it again; the way to finish a width a TRAIN_TIMEOUT stopped, while the machine still has it),
#        SPLIT_BYTES (an archive larger than this is split into parts of this size; default 15 MiB),
#        MEMBERS (e.g. "2": train only these members, each alone with the seeds it has in the ensemble, into
#        member_<i>/; the way to spread a width's seeds over device calls that each finish on their own).
set -uo pipefail
shopt -s nullglob  # a run that left no member folders packs nothing rather than "member_*"
out=${1:?usage: bash benchmarks/gpu_layer_sparsity.sh OUTDIR [D_FF ...]}
shift
widths=${*:-2048 8192 32768}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
runs=${RUNS:-/tmp/layer_sparsity_runs}
extra=${EXTRA:-}
train_timeout=${TRAIN_TIMEOUT:-0}
resume=${RESUME:-0}
members=${MEMBERS:-}
split_bytes=${SPLIT_BYTES:-$((15 * 1024 * 1024))}
mkdir -p "$out" "$runs"
start=$SECONDS
say() { echo "[$((SECONDS - start)) s] $*" | tee -a "$out/layer_sparsity_log.txt"; }
say "widths $widths; $("$py" -c 'import jax; print(jax.__version__, jax.devices())' 2>&1 | tail -1)"
# The overrides that make member $1 of the configured ensemble a run of its own: members=1 and its seeds.
member_seeds() {
  "$py" - "$1" $extra <<'PY'
import sys
from lensjax import config as config_lib
from lensjax.config.ensemble import member_configs
base = config_lib.apply_overrides(config_lib.load_config_file("configs/layer_sparsity.py"),
                                  config_lib.parse_override_args(sys.argv[2:]))
m = member_configs(base)[int(sys.argv[1])]
print(f"--config.train.members=1 --config.train.seed={m.train.seed} --config.data.seed={m.data.seed} "
      f"--config.data.order_seed={m.data.order_seed}")
PY
}
for width in $widths; do
  run="$runs/dff$width"
  t0=$SECONDS
  if [ -z "$members" ]; then
    if [ "$resume" != 1 ]; then rm -rf "$run"; fi
    # shellcheck disable=SC2086
    timeout --signal=TERM "$train_timeout" "$py" -m lensjax train --config configs/layer_sparsity.py --workdir "$run" \
      --config.model.d_ff="$width" --config.logging.progress=lines $extra 2>&1 \
      | grep --line-buffered -v "^WARNING\|^I1\|^W1\|^E1" | tee -a "$out/train_dff$width.log"
    code=${PIPESTATUS[0]}
  else
    code=0
    for member in $members; do
      if [ "$resume" != 1 ]; then rm -rf "$run/member_$member"; fi
      seeds=$(member_seeds "$member") || exit 2
      say "d_ff $width: member $member alone: $seeds"
      # shellcheck disable=SC2086
      timeout --signal=TERM "$train_timeout" "$py" -m lensjax train --config configs/layer_sparsity.py \
        --workdir "$run/member_$member" --config.model.d_ff="$width" --config.logging.progress=lines $extra $seeds \
        2>&1 | grep --line-buffered -v "^WARNING\|^I1\|^W1\|^E1" | tee -a "$out/train_dff${width}_member_$member.log"
      member_code=${PIPESTATUS[0]}
      if [ "$member_code" != 0 ]; then code=$member_code; fi
    done
  fi
  say "d_ff $width: train exit $code after $((SECONDS - t0)) s"
  if [ "$code" = 124 ]; then
    say "d_ff $width: stopped by TRAIN_TIMEOUT=$train_timeout at a checkpoint; run again with RESUME=1 to finish it"
    continue
  fi
  # The members' analyses side by side: each reads its own trace and the machine has cores to spare.
  trained=("$run"/member_*)
  if [ -n "$members" ]; then trained=(); for m in $members; do trained+=("$run/member_$m"); done; fi
  for member in "${trained[@]}"; do
    "$py" -m lensjax deaths --workdir "$member" --json "$member/deaths.json" --extract "$member/deaths_extract.npz" \
      > "$member/deaths.log" 2>&1 &
  done
  for job in $(jobs -p); do wait "$job"; done
  for member in "${trained[@]}"; do
    cat "$member/deaths.log" >> "$out/deaths_dff$width.log"
    say "d_ff $width: deaths $(basename "$member") $([ -s "$member/deaths.json" ] && echo written || echo FAILED)"
    last=$(ls "$member/unit_trace" 2>/dev/null | tail -1)
    if [ -n "$last" ]; then cp "$member/unit_trace/$last" "$member/unit_trace_last.npz"; fi
  done
  # One archive per member: a width's three together pass the 16 MiB a device call brings back. One larger
  # than SPLIT_BYTES is split into .part0, .part1, ... (the --unpack of layer_sparsity_figures.py joins them).
  for member in "${trained[@]}"; do
    name=$(basename "$member")
    archive="$out/layer_sparsity_dff${width}_$name.tar.xz"
    (cd "$run" && tar cJf "$archive" "$name/config.json" "$name/metrics.jsonl" \
      "$name/neuron_events.jsonl" "$name/deaths.json" "$name/deaths_extract.npz" "$name/unit_trace_last.npz" \
      2>/dev/null)
    say "d_ff $width: packed $name, $(du -h "$archive" | cut -f1)"
    if [ "$(stat -c %s "$archive")" -gt "$split_bytes" ]; then
      split -b "$split_bytes" -d -a 1 "$archive" "$archive.part" && rm "$archive"
      say "d_ff $width: split it into $(ls "$archive".part* | wc -l) parts"
    fi
  done
done
