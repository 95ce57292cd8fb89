#!/usr/bin/env bash
# On a GPU machine: the norm-growth sweep of configs/norm_growth.py (Merrill et al. 2021): every SWEEP member
# (weight decay x learning rate) trained PARALLEL at a time on the one GPU (each run is small; most of its
# time is compilation, on the CPU), then `lensjax saturation --json`
# on each final checkpoint. Everything lands in 4 files in OUTDIR:
#   norm_growth_metrics.jsonl    every member's metrics.jsonl, each record with "member": NAME added
#   norm_growth_saturation.json  {NAME: the saturation JSON of its final checkpoint (or {"error": ...})}
#   norm_growth_members.json     {NAME: {"overrides", "config", "train_seconds", "exit_code"}}
#   norm_growth_log.txt          timings and the tail of every log
# Figures: python3 benchmarks/norm_growth_figures.py OUTDIR FIGURES_DIR
# Usage: bash benchmarks/gpu_norm_growth.sh OUTDIR
#   env: STEPS (2000), PARALLEL (5 runs at once), DEADLINE_S (300: no run starts after it),
#        EXTRA (more --config.KEY=VALUE for every member), MEMBERS (0 = all; N: the first N only),
#        PYTHON (python3), RUNS (/tmp/norm_growth_runs)
set -uo pipefail
out=${1:-/tmp/lensjax_norm_growth}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
py=${PYTHON:-python3}
steps=${STEPS:-2000}
parallel=${PARALLEL:-5}
deadline=${DEADLINE_S:-300}
extra=${EXTRA:-}
limit=${MEMBERS:-0}
runs=${RUNS:-/tmp/norm_growth_runs}
rm -rf "$runs"
mkdir -p "$runs"
start=$SECONDS
log="$out/norm_growth_log.txt"
: > "$log"
say() { echo "[$((SECONDS - start)) s] $*" | tee -a "$log"; }

# One line per SWEEP member: NAME, then its overrides.
"$py" - > "$runs/members.txt" <<'EOF'
import importlib.util
spec = importlib.util.spec_from_file_location("norm_growth", "configs/norm_growth.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
for member in module.SWEEP:  # the format `lensjax sweep` reads: a "name" and dotted keys
  print(member["name"], *(f"--config.{key}={value}" for key, value in member.items() if key != "name"))
EOF
if [ "$limit" -gt 0 ]; then head -n "$limit" "$runs/members.txt" > "$runs/m" && mv "$runs/m" "$runs/members.txt"; fi
say "$(wc -l < "$runs/members.txt") members, $steps steps each, $parallel at a time; $("$py" -c 'import jax; print(jax.devices())' 2>&1 | tail -1)"

saturation=(-m lensjax saturation)

train_member() {  # NAME OVERRIDES...
  local name=$1; shift
  local t0=$SECONDS
  # shellcheck disable=SC2086
  "$py" -m lensjax train --config configs/norm_growth.py --workdir "$runs/$name" --config.train.steps="$steps" \
    --config.logging.progress=lines "$@" $extra > "$runs/$name.train.log" 2>&1
  local code=$?
  echo "$code $((SECONDS - t0))" > "$runs/$name.train.status"
  if [ "$code" -eq 0 ]; then
    "$py" "${saturation[@]}" --workdir "$runs/$name" --json > "$runs/$name.saturation.json" 2> "$runs/$name.saturation.log"
    echo $? > "$runs/$name.saturation.status"
  fi
}

while read -r name overrides; do
  if [ $((SECONDS - start)) -ge "$deadline" ]; then
    say "skipped $name: past DEADLINE_S=$deadline"
    continue
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do wait -n; done
  say "start $name"
  # shellcheck disable=SC2086
  train_member "$name" $overrides &
done < "$runs/members.txt"
wait
say "all members done"

"$py" - "$runs" "$out" <<'EOF' 2>&1 | tee -a "$log"
import json, os, sys
runs, out = sys.argv[1:3]
members, saturation = {}, {}
with open(os.path.join(out, "norm_growth_metrics.jsonl"), "w") as metrics:
  for line in open(os.path.join(runs, "members.txt")):
    name, *overrides = line.split()
    workdir = os.path.join(runs, name)
    status_path = os.path.join(runs, name + ".train.status")
    code, seconds = (open(status_path).read().split() if os.path.exists(status_path) else ("skipped", "0"))
    config_path = os.path.join(workdir, "config.json")
    members[name] = {"overrides": dict(o[len("--config."):].split("=", 1) for o in overrides),
                     "config": json.load(open(config_path)) if os.path.exists(config_path) else None,
                     "train_seconds": float(seconds), "exit_code": code}
    records = 0
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
      for record in open(os.path.join(workdir, "metrics.jsonl")):
        if record.endswith("\n"):
          metrics.write(json.dumps({"member": name, **json.loads(record)}) + "\n")
          records += 1
    result_path = os.path.join(runs, name + ".saturation.json")
    try:
      saturation[name] = json.loads(open(result_path).read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
      err_path = os.path.join(runs, name + ".saturation.log")
      saturation[name] = {"error": open(err_path).read()[-2000:] if os.path.exists(err_path) else "not run"}
    print(f"{name}: train exit {code} in {float(seconds):.0f} s, {records} records, saturation "
          f"{'ok' if 'error' not in saturation[name] else 'FAILED'}")
json.dump(saturation, open(os.path.join(out, "norm_growth_saturation.json"), "w"), indent=1)
json.dump(members, open(os.path.join(out, "norm_growth_members.json"), "w"), indent=1)
EOF
for f in "$runs"/*.train.log "$runs"/*.saturation.log; do
  [ -f "$f" ] || continue
  { echo "== $(basename "$f")"; grep -v "^\s" "$f" | tail -8; } >> "$log"
done
say "done; outputs in $out"
ls -la "$out"
