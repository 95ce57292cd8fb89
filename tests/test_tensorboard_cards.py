"""What a run's TensorBoard shows: heat-map figures, few cards, HParams, descriptions, a custom-scalar layout."""

import os

import numpy as np
from tensorboard.backend.event_processing import event_accumulator

from lensjax.io import metric_descriptions
from lensjax.io.run_logger import RunLogger

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "metrics.md")


def load_events(logdir):
  accumulator = event_accumulator.EventAccumulator(logdir, size_guidance=dict.fromkeys(
      event_accumulator.DEFAULT_SIZE_GUIDANCE, 0))
  return accumulator.Reload()


def record(step):
  """A 2-layer x 4-head record as the logging step fetches it."""
  rng = np.random.default_rng(step)
  return {"train/loss": np.float32(2.0 - step / 100), "ffn/dead": rng.random(2), "ffn/active_token": rng.random(2),
          "attn/entropy": rng.random((2, 4)), "attn/bypass": rng.random(2), "attn/sink": rng.random(2)}


def log_run(workdir, per_layer):
  from lensjax.stats.lenses import train_lenses
  from lensjax import config as config_lib
  config = config_lib.Config()
  logger = RunLogger(str(workdir), 30, 0, 1, 1.0, "none", 2, train_lenses(config), per_layer_scalars=per_layer)
  logger.hparams(0, {"model": {"num_layers": 2, "activation": "relu"}, "optim": {"lr": 1e-3}})
  for step in (0, 10, 20):
    logger.write(step, record(step), {})
  logger.close()
  return load_events(os.path.join(str(workdir), "tb"))


def test_default_run_has_few_cards_figures_hparams_descriptions_and_a_layout(tmp_path):
  events = log_run(tmp_path, per_layer=False)
  scalars = events.Tags()["scalars"]
  assert not [tag for tag in scalars if "/layer_" in tag]
  assert "ffn/dead/mean" in scalars and "attn/entropy/last_layer" in scalars
  assert len(scalars) <= 30  # 1 + 5 families x 5 summaries, not 1 + 4 x 2 + 8 = 17 per-unit... at 12 x 12 far fewer
  images = events.Tags()["images"]
  assert {"ffn/dead/heatmap", "attn/entropy/heatmap", "attn/bypass/heatmap"} <= set(images)
  for tag in images:
    image = events.Images(tag)[-1]
    assert image.width >= 300 and image.height >= 200
  assert len(events.Images("ffn/dead/heatmap")) == 3  # every figure reaches disk by close()
  start = events.PluginTagToContent("hparams")
  assert "_hparams_/session_start_info" in start and "_hparams_/experiment" in start
  from tensorboard.plugins.hparams import metadata
  info = metadata.parse_session_start_info_plugin_data(start["_hparams_/session_start_info"])
  assert info.hparams["model.num_layers"].number_value == 2
  assert info.hparams["model.activation"].string_value == "relu"
  assert "fraction of units" in events.SummaryMetadata("ffn/dead/mean").summary_description
  assert events.SummaryMetadata("train/loss").summary_description.startswith("mean next-token")
  assert "custom_scalars__config__" in events.PluginTagToContent("custom_scalars")


def test_every_described_tag_names_its_plugin(tmp_path, caplog):
  """TensorBoard's readers warn about metadata without a plugin ("oddly not associated with a plugin")."""
  with caplog.at_level("WARNING"):
    events = log_run(tmp_path, per_layer=True)
  assert "oddly" not in caplog.text
  assert events.SummaryMetadata("train/loss").plugin_data.plugin_name == "scalars"
  assert events.SummaryMetadata("ffn/dead/heatmap").plugin_data.plugin_name == "images"
  assert events.Scalars("train/loss")[-1].value == np.float32(2.0 - 20 / 100)


def test_the_switch_brings_the_per_layer_scalars_back(tmp_path):
  scalars = log_run(tmp_path, per_layer=True).Tags()["scalars"]
  assert "ffn/dead/layer_1" in scalars and "attn/entropy/layer_1/head_3" in scalars


def test_descriptions_table_is_docs_metrics_md():
  with open(DOCS, encoding="utf-8") as f:
    assert metric_descriptions.descriptions_from_markdown(f.read()) == metric_descriptions.DESCRIPTIONS
  assert metric_descriptions.markdown_escaped("6*N + 12*L") == "6\\*N + 12\\*L"
