"""TensorBoard event files written without TensorFlow.

TensorFlow is a large install that only its own summary ops would use here, so
we build the summary protos directly (`tensorboard.compat.proto`) and hand them
to the `tensorboard` package's own `EventFileWriter`, which does the record
framing, CRCs and background flushing. Only encodings that TensorBoard still
reads natively are used: `simple_value` scalars, TF1-style `HistogramProto`
histograms, `Summary.Image` PNGs and text-plugin string tensors. A tag's one-line
description (`SummaryMetadata.summary_description`, which TensorBoard keeps
from a tag's first value) goes with its first value written here.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Mapping
from typing import Callable

import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> (channels, `Summary.Image.colorspace`).
_PNG_COLOR_TYPES = {0: (1, 1), 4: (2, 2), 2: (3, 3), 6: (4, 4)}


class SummaryWriter:
  """Appends scalars, histograms, images and text to one event file."""

  def __init__(self, logdir: str, describe: Callable[[str], str] = lambda tag: ""):
    """`describe(tag)`: the tag's one-line Markdown description ("" for none)."""
    self._writer = EventFileWriter(logdir)
    self._closed = False
    self._describe, self._described = describe, set()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Writes all `values` as one event; NaN/inf are kept for TensorBoard."""
    if not values:
      return
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value), metadata=self._metadata(tag, scalar_metadata.PLUGIN_NAME))
        for tag, value in values.items()
    ])
    self._write(step, summary)

  def summary(self, step: int, summary: summary_pb2.Summary) -> None:
    """Writes a summary built elsewhere (plugin data: hparams, custom-scalar layouts)."""
    self._write(step, summary)

  def histogram(self, step: int, tag: str, values: np.ndarray,
                bins: int = 30) -> None:
    """Writes a histogram of the finite entries of `values`."""
    histo = histogram_proto(values, bins)
    self._write(step, _single_value(tag, histo=histo, metadata=self._metadata(tag, histogram_metadata.PLUGIN_NAME)))

  def image(self, step: int, tag: str, image: np.ndarray | bytes) -> None:
    """Writes an HxW[x1|2|3|4] uint8 array, or bytes that are already a PNG."""
    png = image if isinstance(image, bytes) else encode_png(image)
    self._write(step, _single_value(tag, image=image_proto(png),
                                         metadata=self._metadata(tag, image_metadata.PLUGIN_NAME)))

  def text(self, step: int, tag: str, text: str, description: str = "") -> None:
    """Writes markdown `text` the way the text plugin's `text_pb` does."""
    tensor = string_tensor_proto(text)
    metadata = text_metadata.create_summary_metadata(
        display_name=tag, description=description)
    self._write(step, _single_value(tag, tensor=tensor, metadata=metadata))

  def _metadata(self, tag: str, plugin: str) -> summary_pb2.SummaryMetadata | None:
    """The description on a tag's first value only: TensorBoard reads no later one. The metadata names the
    plugin that shows the value (what TensorBoard's own conversion of these encodings names), without which
    its event readers warn that the tag is "oddly not associated with a plugin"."""
    if tag in self._described:
      return None
    self._described.add(tag)
    description = self._describe(tag)
    if not description:
      return None
    return summary_pb2.SummaryMetadata(summary_description=description,
                                       plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    if not self._closed:
      self._writer.close()
      self._closed = True

  def __enter__(self) -> SummaryWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _write(self, step: int, summary: summary_pb2.Summary) -> None:
    event = event_pb2.Event(wall_time=time.time(), step=int(step),
                            summary=summary)
    self._writer.add_event(event)


def _single_value(tag: str, **fields) -> summary_pb2.Summary:
  return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                              **fields)])


def histogram_proto(values: np.ndarray,
                    bins: int) -> summary_pb2.HistogramProto:
  """TF1-style histogram: bucket[i] counts values up to bucket_limit[i].

  Non-finite values are dropped because a histogram has no bucket for NaN and
  one inf would stretch every bucket to infinite width.
  """
  flat = np.asarray(values, dtype=np.float64).ravel()
  finite = flat[np.isfinite(flat)]
  counts, edges = np.histogram(finite, bins=bins)
  # TensorBoard takes the outer bucket edges from min/max, so an empty
  # histogram needs no special buckets, only zero extremes.
  return summary_pb2.HistogramProto(
      min=float(finite.min()) if finite.size else 0.0,
      max=float(finite.max()) if finite.size else 0.0,
      num=float(finite.size),
      sum=float(finite.sum()),
      sum_squares=float(np.dot(finite, finite)),
      bucket_limit=edges[1:].tolist(),
      bucket=counts.astype(np.float64).tolist(),
  )


def string_tensor_proto(text: str) -> tensor_pb2.TensorProto:
  """A scalar DT_STRING tensor, which the text plugin renders as markdown."""
  return tensor_pb2.TensorProto(
      dtype=types_pb2.DT_STRING,
      tensor_shape=tensor_shape_pb2.TensorShapeProto(),
      string_val=[text.encode("utf-8")],
  )


def image_proto(png: bytes) -> summary_pb2.Summary.Image:
  """Wraps PNG bytes, reading width/height/colorspace from its IHDR chunk."""
  width, height, color_type = _png_header(png)
  _, colorspace = _PNG_COLOR_TYPES[color_type]
  return summary_pb2.Summary.Image(
      height=height, width=width, colorspace=colorspace,
      encoded_image_string=png)


def _png_header(png: bytes) -> tuple[int, int, int]:
  # IHDR is always the first chunk: signature(8) length(4) type(4) data(13).
  if png[:8] != _PNG_SIGNATURE or png[12:16] != b"IHDR":
    raise ValueError("image bytes are not a PNG (missing PNG signature/IHDR)")
  width, height, _, color_type = struct.unpack(">IIBB", png[16:26])
  if color_type not in _PNG_COLOR_TYPES:
    raise ValueError(
        f"palette PNGs (colour type {color_type}) are not supported")
  return width, height, color_type


def encode_png(image: np.ndarray) -> bytes:
  """Lossless 8-bit PNG of an HxW or HxWxC (C in 1..4) uint8 array, written by Pillow (which matplotlib depends
  on)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"image must be uint8, got {image.dtype}")
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[:, :, 0]
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (2, 3, 4))):
    raise ValueError(f"image must be HxW or HxWxC with C in 1..4, got shape {image.shape}")
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")  # L, LA, RGB or RGBA from the shape
  return buffer.getvalue()
