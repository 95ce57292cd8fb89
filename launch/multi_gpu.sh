#!/usr/bin/env bash
# Train on every GPU of this host.
#
# Usage:
#   launch/multi_gpu.sh CONFIG WORKDIR [--config.a.b=VALUE ...]
#       One process drives all local GPUs (the simplest way; what launch/local.sh does).
#   PROCESSES=N launch/multi_gpu.sh CONFIG WORKDIR [--config.a.b=VALUE ...]
#   PROCESSES=all launch/multi_gpu.sh CONFIG WORKDIR [--config.a.b=VALUE ...]
#       One process per GPU (N GPUs, or every GPU nvidia-smi lists), joined by
#       jax.distributed on localhost: process i sees GPU i alone
#       (CUDA_VISIBLE_DEVICES=i) and gets JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT,
#       JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i. This is how each host of
#       a cluster runs, so it is the way to rehearse one on a single machine.
#       PORT is $LENSJAX_PORT or a free one. Process 0 prints to this terminal
#       and writes metrics.jsonl, tb/ and the log; process i > 0 prints to
#       WORKDIR/process_i.log. Every process writes its share of each checkpoint.
#
# Examples:
#   launch/multi_gpu.sh configs/gpt2_small.py runs/gpt2 --config.data.path=train.bin
#   PROCESSES=all launch/multi_gpu.sh configs/gpt2_small.py runs/gpt2 --config.data.path=train.bin
#
# train.batch_size is global: it must divide by the number of GPUs (and of processes).
# SIGTERM or Ctrl-C reaches every process: each saves a checkpoint and exits 0;
# the same command resumes. If one process fails, the others are stopped.
set -euo pipefail
usage="usage: [PROCESSES=N|all] launch/multi_gpu.sh CONFIG WORKDIR [--config.a.b=VALUE ...]"
config=${1:?$usage}
workdir=${2:?$usage}
shift 2
# Let XLA take GPU memory as it needs it rather than 75% up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
python=${PYTHON:-python}
processes=${PROCESSES:-1}

if [ "$processes" = 1 ]; then
  exec "$python" -m lensjax train --config "$config" --workdir "$workdir" "$@"
fi

if [ "$processes" = all ]; then
  processes=$(nvidia-smi --list-gpus | wc -l)
fi
port=${LENSJAX_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
mkdir -p "$workdir"
echo "launch/multi_gpu.sh: $processes processes, one per GPU, coordinator 127.0.0.1:$port" >&2

pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap stop TERM INT
for ((i = 0; i < processes; i++)); do
  log=/dev/stderr
  [ "$i" -gt 0 ] && log="$workdir/process_$i.log"
  CUDA_VISIBLE_DEVICES=$i JAX_COORDINATOR_ADDRESS=127.0.0.1:$port JAX_NUM_PROCESSES=$processes \
    JAX_PROCESS_ID=$i "$python" -m lensjax train --config "$config" --workdir "$workdir" "$@" >"$log" 2>&1 &
  pids+=($!)
done

# The first process to fail takes the others down (they would wait in a collective otherwise).
status=0
while [ "${#pids[@]}" -gt 0 ]; do
  done_pid= code=0
  wait -n -p done_pid "${pids[@]}" || code=$?
  [ -n "$done_pid" ] || continue  # a signal interrupted the wait; the trap passed it on
  pids=($(printf '%s\n' "${pids[@]}" | grep -vx "$done_pid" || true))
  if [ "$code" -ne 0 ] && [ "$status" -eq 0 ]; then
    status=$code
    echo "launch/multi_gpu.sh: a process exited with $code; stopping the others (see $workdir/process_*.log)" >&2
    [ "${#pids[@]}" -eq 0 ] || kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
done
exit "$status"
