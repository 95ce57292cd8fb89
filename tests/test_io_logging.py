"""Round trips for the run's logs: TensorBoard events and metrics.jsonl."""

import io
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from lensjax.errors import InputError
from lensjax.io.metrics_log import MetricsLog
from lensjax.io.metrics_log import read_metrics
from lensjax.io.metrics_log import truncate_after
from lensjax.io.tensorboard import SummaryWriter
from lensjax.io.tensorboard import encode_png


def load_events(logdir: str) -> event_accumulator.EventAccumulator:
  keep_everything = dict.fromkeys(event_accumulator.DEFAULT_SIZE_GUIDANCE, 0)
  accumulator = event_accumulator.EventAccumulator(
      logdir, size_guidance=keep_everything)
  return accumulator.Reload()


def write_events(logdir: str, write) -> event_accumulator.EventAccumulator:
  writer = SummaryWriter(logdir)
  write(writer)
  writer.close()
  return load_events(logdir)


# --- TensorBoard ------------------------------------------------------------


def test_scalars_at_several_steps_read_back_with_float32_precision(tmp_path):
  logged = {
      0: {"loss": 2.5, "lr": 1e-3},
      10: {"loss": np.float32(1.25), "lr": 0.1 + 0.2},
      20: {"loss": float("nan"), "lr": float("inf")},
  }

  def write(writer):
    for step, values in logged.items():
      writer.scalars(step, values)

  events = write_events(str(tmp_path), write)

  assert sorted(events.Tags()["scalars"]) == ["loss", "lr"]
  for tag in ("loss", "lr"):
    read = events.Scalars(tag)
    assert [event.step for event in read] == [0, 10, 20]
    for event in read[:2]:
      assert event.value == np.float32(logged[event.step][tag])
  assert math.isnan(events.Scalars("loss")[2].value)
  assert events.Scalars("lr")[2].value == math.inf


def test_histogram_counts_only_finite_values(tmp_path):
  values = np.array([[-2.0, 0.5, 1.0], [3.0, np.nan, np.inf]], np.float32)
  finite = np.array([-2.0, 0.5, 1.0, 3.0])

  events = write_events(str(tmp_path),
                        lambda w: w.histogram(7, "weights", values, bins=4))

  assert events.Tags()["histograms"] == ["weights"]
  (event,) = events.Histograms("weights")
  histo = event.histogram_value
  assert event.step == 7
  assert histo.num == 4
  assert histo.min == -2.0 and histo.max == 3.0
  assert histo.sum == pytest.approx(finite.sum())
  assert histo.sum_squares == pytest.approx(np.dot(finite, finite))
  assert len(histo.bucket) == 4 and sum(histo.bucket) == 4
  assert histo.bucket_limit[-1] == 3.0


def test_histogram_of_no_finite_values_is_empty_not_an_error(tmp_path):
  events = write_events(
      str(tmp_path),
      lambda w: w.histogram(1, "all_nan", np.full(3, np.nan)))
  (event,) = events.Histograms("all_nan")
  assert event.histogram_value.num == 0


@pytest.mark.parametrize("channels", [3, 4])
def test_image_array_is_a_lossless_png_of_the_right_size(tmp_path, channels):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, size=(5, 7, channels), dtype=np.uint8)

  events = write_events(str(tmp_path), lambda w: w.image(3, "sample", pixels))

  assert events.Tags()["images"] == ["sample"]
  (event,) = events.Images("sample")
  assert (event.step, event.height, event.width) == (3, 5, 7)
  decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
  np.testing.assert_array_equal(decoded, pixels)


def test_image_png_bytes_are_written_unchanged(tmp_path):
  png = io.BytesIO()
  Image.new("RGB", (4, 2), (255, 0, 0)).save(png, format="PNG")

  events = write_events(str(tmp_path),
                        lambda w: w.image(0, "png", png.getvalue()))

  (event,) = events.Images("png")
  assert (event.height, event.width) == (2, 4)
  assert event.encoded_image_string == png.getvalue()


def test_image_rejects_what_it_cannot_encode(tmp_path):
  writer = SummaryWriter(str(tmp_path))
  with pytest.raises(ValueError, match="uint8"):
    writer.image(0, "float", np.zeros((2, 2, 3), np.float32))
  with pytest.raises(ValueError, match="shape"):
    writer.image(0, "five_channels", np.zeros((2, 2, 5), np.uint8))
  with pytest.raises(ValueError, match="PNG"):
    writer.image(0, "jpeg", b"\xff\xd8\xff\xe0not a png")
  writer.close()


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 1), (3, 4, 2), (3, 4, 3), (3, 4, 4)])
def test_encode_png_round_trips_every_channel_count(shape):
  pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  decoded = np.asarray(Image.open(io.BytesIO(encode_png(pixels))))
  np.testing.assert_array_equal(decoded.reshape(shape), pixels)


def test_text_is_a_text_plugin_string_tensor(tmp_path):
  markdown = "## Config\n\n| key | value |\n|---|---|\n| lr | 1e-3 | ünïcode"

  events = write_events(str(tmp_path), lambda w: w.text(5, "config", markdown))

  assert "config" in events.PluginTagToContent("text")
  (event,) = events.Tensors("config")
  assert event.step == 5
  text = tensor_util.make_ndarray(event.tensor_proto).item().decode("utf-8")
  assert text == markdown


def test_all_kinds_share_one_event_file_and_close_is_idempotent(tmp_path):
  writer = SummaryWriter(str(tmp_path))
  writer.scalars(1, {"loss": 1.0})
  writer.histogram(1, "h", np.arange(10))
  writer.image(1, "i", np.zeros((2, 2, 3), np.uint8))
  writer.text(1, "t", "hello")
  writer.flush()
  writer.close()
  writer.close()

  assert len(os.listdir(tmp_path)) == 1
  tags = load_events(str(tmp_path)).Tags()
  kinds = ("scalars", "histograms", "images", "tensors")
  assert [tags[kind] for kind in kinds] == [["loss"], ["h"], ["i"], ["t"]]


# --- metrics.jsonl ----------------------------------------------------------


def test_metrics_log_round_trip_converts_array_scalars(tmp_path):
  path = tmp_path / "run" / "nested" / "metrics.jsonl"  # no parents yet
  log = MetricsLog(str(path))
  log.write(0, {"loss": np.float32(2.5), "acc": jnp.float32(0.25)})
  log.write(np.int64(1), {"loss": 1.5, "grad_norm": float("nan"),
                          "max": float("inf")})
  log.close()

  records = read_metrics(str(path))

  assert records[0] == {"step": 0, "loss": 2.5, "acc": 0.25}
  assert records[1]["step"] == 1 and type(records[1]["step"]) is int
  assert math.isnan(records[1]["grad_norm"])
  assert records[1]["max"] == math.inf
  assert path.read_text().splitlines()[1] == (
      '{"step": 1, "loss": 1.5, "grad_norm": NaN, "max": Infinity}')


def test_metrics_log_appends_to_an_existing_file(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  with MetricsLog(path) as log:
    log.write(0, {"loss": 1.0})
  with MetricsLog(path) as log:
    log.write(1, {"loss": 0.5})
  assert [r["step"] for r in read_metrics(path)] == [0, 1]


def test_metrics_log_line_is_on_disk_before_close(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  log = MetricsLog(path)
  log.write(3, {"loss": 1.0})
  assert read_metrics(path) == [{"step": 3, "loss": 1.0}]
  log.close()


def test_step_is_not_a_metric_name(tmp_path):
  with MetricsLog(str(tmp_path / "metrics.jsonl")) as log:
    with pytest.raises(ValueError, match="step"):
      log.write(0, {"step": 1.0})


def test_read_metrics_skips_a_partial_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "loss": 0.5}\n'
                  '{"step": 2, "lo')
  assert read_metrics(str(path)) == [{"step": 0, "loss": 1.0},
                                     {"step": 1, "loss": 0.5}]


def test_reopening_after_a_partial_line_keeps_the_next_record_whole(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo')
  with MetricsLog(str(path)) as log:
    log.write(1, {"loss": 0.5})
  assert read_metrics(str(path)) == [{"step": 0, "loss": 1.0},
                                     {"step": 1, "loss": 0.5}]


def test_read_metrics_rejects_a_corrupt_middle_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
  with pytest.raises(InputError, match="line 2"):
    read_metrics(str(path))


def test_truncate_after_drops_later_steps_and_keeps_the_rest_byte_identical(
    tmp_path):
  path = tmp_path / "metrics.jsonl"
  with MetricsLog(str(path)) as log:
    for step in range(10):
      log.write(step, {"loss": 1.0 / (step + 1), "nan": float("nan")})
  original = path.read_bytes()
  first_five_lines = b"".join(original.splitlines(keepends=True)[:5])

  dropped = truncate_after(str(path), 4)

  assert dropped == 5
  assert path.read_bytes() == first_five_lines
  assert [r["step"] for r in read_metrics(str(path))] == [0, 1, 2, 3, 4]
  assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no temp file left behind


def test_truncate_after_with_nothing_later_changes_nothing(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0, "loss": 1.0}\n{"step": 5, "loss": 0.5}\n')
  before = path.read_bytes()
  assert truncate_after(str(path), 5) == 0
  assert path.read_bytes() == before


def test_truncate_after_also_cuts_a_partial_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
  assert truncate_after(str(path), 1) == 1
  assert path.read_text() == '{"step": 0}\n{"step": 1}\n'


def test_truncate_after_missing_file_drops_nothing(tmp_path):
  assert truncate_after(str(tmp_path / "absent.jsonl"), 3) == 0
  assert not (tmp_path / "absent.jsonl").exists()


def test_metrics_lines_are_plain_json_objects(tmp_path):
  path = tmp_path / "metrics.jsonl"
  with MetricsLog(str(path)) as log:
    log.write(0, {"a": 1, "b": np.float64(2.0)})
  assert json.loads(path.read_text()) == {"step": 0, "a": 1.0, "b": 2.0}
