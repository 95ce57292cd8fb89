#!/usr/bin/env bash
# Train on a Cloud TPU pod slice (several TPU VM workers): runs the same
# `lensjax train` on every worker through `gcloud compute tpus tpu-vm ssh
# --worker=all`, with LENSJAX_COORDINATOR=auto: jax.distributed finds the
# workers, their number and each one's rank through the TPU VM metadata server,
# so nothing else is set. (jax.distributed also lets the workers agree on the
# step at which a SIGTERM, e.g. a maintenance event, stops all of them.)
#
# Usage (from your workstation):
#   launch/tpu_pod.sh NAME ZONE install
#       Copies this repository to ~/lensjax on every worker and installs it with
#       JAX for TPU (pip install -e ~/lensjax "jax[tpu]").
#   launch/tpu_pod.sh NAME ZONE CONFIG WORKDIR [--config.a.b=VALUE ...]
#       Trains on all workers. CONFIG is relative to ~/lensjax on the workers.
#
# Environment: PROJECT (gcloud --project, default: gcloud's), LENSJAX_DIR (the
# repository on the workers, default ~/lensjax), PYTHON (default python3).
#
# WORKDIR must be a directory that every worker mounts at the same path (a
# Filestore/NFS share, or a Cloud Storage bucket mounted with gcsfuse): each
# worker writes its shards of each checkpoint there; worker 0 writes
# metrics.jsonl and tb/. train.batch_size is global (all chips of the slice).
# Every worker's output streams here; only worker 0 prints progress.
#
# Example:
#   launch/tpu_pod.sh my-v4-32 us-central2-b install
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/gpt2_small.py /mnt/shared/runs/gpt2 \
#       --config.data.path=/mnt/shared/data/train.bin --config.model.dtype=bfloat16
# A preempted or interrupted run resumes from its newest checkpoint with the same command.
set -euo pipefail
usage="usage: launch/tpu_pod.sh NAME ZONE install | launch/tpu_pod.sh NAME ZONE CONFIG WORKDIR [--config.a.b=VALUE ...]"
name=${1:?$usage}
zone=${2:?$usage}
what=${3:?$usage}
shift 3
project=()
[ -n "${PROJECT:-}" ] && project=(--project "$PROJECT")
dir=${LENSJAX_DIR:-'~/lensjax'}
python=${PYTHON:-python3}
ssh_all() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" "${project[@]}" --worker=all --command "$1"; }

if [ "$what" = install ]; then
  repo=$(cd "$(dirname "$0")/.." && pwd)
  archive=$(mktemp -t lensjax.XXXXXX.tar.gz)
  git -C "$repo" ls-files -z | tar -C "$repo" --null -T - -czf "$archive"
  gcloud compute tpus tpu-vm scp "$archive" "$name:lensjax.tar.gz" --zone "$zone" "${project[@]}" --worker=all
  rm -f "$archive"
  ssh_all "mkdir -p $dir && tar -xzf lensjax.tar.gz -C $dir && $python -m pip install -q -U -e $dir 'jax[tpu]'"
  exit 0
fi

config=$what
workdir=${1:?$usage}
shift
overrides=
[ "$#" -eq 0 ] || printf -v overrides ' %q' "$@"
ssh_all "cd $dir && LENSJAX_COORDINATOR=auto $python -m lensjax train --config $(printf %q "$config") --workdir $(printf %q "$workdir")$overrides"
