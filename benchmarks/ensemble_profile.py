"""Where an ensemble's step time goes: per-kernel GPU time of one `ensemble_speed.py` setting.

    python benchmarks/ensemble_profile.py SETTING MEMBERS OUTDIR [KEY=VALUE ...]

Compiles the plain train step of SETTING (`small` or `medium` of ensemble_speed.py) with
train.members = MEMBERS, writes its optimised HLO to OUTDIR/hlo_<setting>_m<members>.txt,
prints the pipelined wall time per step (20 calls queued back to back, as the training loop
runs them) and, from a `jax.profiler` trace of 10 steps, the GPU kernel time per step summed
by kernel name (the 30 largest). Set XLA_FLAGS in the environment to try a compiler lever.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(__file__))
import ensemble_speed  # noqa: E402
from lensjax import config as config_lib  # noqa: E402
from lensjax.config import Config  # noqa: E402
from lensjax.train import loop  # noqa: E402

TIMED, TRACED = 20, 10


def gpu_kernel_events(trace_dir: str) -> list[dict]:
  path = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)[0]
  events = json.load(gzip.open(path))
  events = events["traceEvents"] if isinstance(events, dict) else events
  processes = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  return [e for e in events if e.get("ph") == "X" and "GPU" in processes.get(e.get("pid"), "")]


def main(argv: list[str]) -> int:
  name, members, out = argv[0], int(argv[1]), argv[2]
  overrides = dict(item.split("=", 1) for item in argv[3:])
  _, _, values = ensemble_speed.SETTINGS[name]
  config = Config().updated({**ensemble_speed.COMMON, **values, "train.members": members})
  run = loop.build(loop.prepare(config_lib.apply_overrides(config, overrides)))
  batch, state = loop.device_batch(run, 0), run.state
  compiled = run.plain_step.lower(state, batch).compile()
  tag = f"{name}_m{members}"
  with open(os.path.join(out, f"hlo_{tag}.txt"), "w") as f:
    f.write(compiled.as_text())
  for _ in range(5):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(TIMED):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  wall_ms = 1e3 * (time.perf_counter() - start) / TIMED
  trace_dir = tempfile.mkdtemp()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(TRACED):
      state, _ = compiled(state, batch)
    jax.block_until_ready(state)
  kernels = gpu_kernel_events(trace_dir)
  total_us, calls = collections.defaultdict(float), collections.Counter()
  for event in kernels:
    total_us[event["name"]] += event["dur"]
    calls[event["name"]] += 1
  busy_ms = sum(total_us.values()) / TRACED / 1e3
  print(f"{tag} {overrides or ''} wall {wall_ms:.3f} ms/step (pipelined); GPU kernel time {busy_ms:.3f} ms/step, "
        f"{len(kernels) / TRACED:.0f} kernels/step")
  for kernel, us in sorted(total_us.items(), key=lambda kv: -kv[1])[:30]:
    print(f"  {us / TRACED:8.1f} us x {calls[kernel] / TRACED:4.1f}  {kernel[:110]}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
