#!/usr/bin/env bash
# Train on this machine with every local device (CPU, one or more GPUs, or a TPU VM).
# Usage: launch/local.sh configs/NAME.py WORKDIR [--config.a.b=VALUE ...]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [overrides...]}
shift 2
# Let XLA take GPU memory as it needs it rather than 75% up front, so that
# TensorBoard or a second analysis can share the device.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec python -m lensjax train --config "$config" --workdir "$workdir" "$@"
