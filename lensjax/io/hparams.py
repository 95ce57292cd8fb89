"""TensorBoard's HParams tab from a resolved config, with the hparams plugin's own protos (no TensorFlow).

`tensorboard.plugins.hparams.summary` imports TensorFlow, so the two summaries it writes are built here from
`api_pb2`, `plugin_data_pb2` and the plugin's `metadata`: the experiment (which hyper-parameters and metrics
exist) and the session start info (this run's values). tensorboardX would write the same protos; it is one
more dependency for two messages. Every run directory gets its own (a solo run, each sweep member, each
ensemble member), so runs compare by hyper-parameters across a `--logdir` of many.
"""

from __future__ import annotations

import json
import time
from typing import Iterable

from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from google.protobuf import struct_pb2

# The metrics the HParams tab shows per run by default (its table and parallel-coordinates view).
DEFAULT_METRICS = ("train/loss", "eval/loss", "entropy/model_token", "norm/params")


def flat_config(config_dict: dict, prefix: str = "") -> dict[str, bool | float | str]:
  """`{"model": {"num_layers": 2}}` -> `{"model.num_layers": 2}`; lists and None as JSON strings."""
  flat = {}
  for key, value in config_dict.items():
    name = prefix + key
    if isinstance(value, dict):
      flat.update(flat_config(value, name + "."))
    elif isinstance(value, (bool, int, float, str)):
      flat[name] = value
    else:
      flat[name] = json.dumps(value)
  return flat


def _value(value) -> struct_pb2.Value:
  if isinstance(value, bool):
    return struct_pb2.Value(bool_value=value)
  if isinstance(value, (int, float)):
    return struct_pb2.Value(number_value=float(value))
  return struct_pb2.Value(string_value=str(value))


def _data_type(value) -> int:
  if isinstance(value, bool):
    return api_pb2.DATA_TYPE_BOOL
  if isinstance(value, (int, float)):
    return api_pb2.DATA_TYPE_FLOAT64
  return api_pb2.DATA_TYPE_STRING


def _summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
  return summary_pb2.Summary(value=[summary_pb2.Summary.Value(
      tag=tag, metadata=hparams_metadata.create_summary_metadata(data), tensor=hparams_metadata.NULL_TENSOR)])


def hparams_summaries(config_dict: dict, metrics: Iterable[str] = DEFAULT_METRICS) -> list[summary_pb2.Summary]:
  """The experiment and session-start summaries of one run whose resolved config is `config_dict`."""
  values = flat_config(config_dict)
  experiment = api_pb2.Experiment(
      hparam_infos=[api_pb2.HParamInfo(name=name, type=_data_type(value)) for name, value in values.items()],
      metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics])
  start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
  for name, value in values.items():
    start.hparams[name].CopyFrom(_value(value))
  return [_summary(hparams_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
          _summary(hparams_metadata.SESSION_START_INFO_TAG,
                   plugin_data_pb2.HParamsPluginData(session_start_info=start))]
