"""One background thread that renders heat maps and writes them to TensorBoard, off the training thread.

The loop hands over NumPy arrays that are already on the host (the fetched record of a logging step), so
nothing here waits for the device or adds a host sync. A figure takes tens of milliseconds of matplotlib;
on the thread it overlaps the next steps instead of adding to them. `close()` draws every figure still
queued, then joins: nothing queued is lost at the end of training, on SIGTERM or when the loop raises.
"""

from __future__ import annotations

import queue
import sys
import threading
from typing import Callable

MAX_QUEUED = 256  # figures waiting; beyond that (rendering slower than logging) new ones are dropped, counted

_STOP = object()


class FigureWorker:
  """Runs `render() -> PNG bytes` jobs in order and passes each result to `write(step, tag, png)`."""

  def __init__(self, write: Callable[[int, str, bytes], None]):
    self._write = write
    self._jobs: queue.Queue = queue.Queue(MAX_QUEUED)
    self.dropped = 0
    self.failed = 0
    self._thread = threading.Thread(target=self._run, name="lensjax-figures", daemon=True)
    self._thread.start()
    self._closed = False

  def submit(self, step: int, tag: str, render: Callable[[], bytes]) -> None:
    """Queues a figure; never blocks the caller (a full queue drops the figure and counts it)."""
    if self._closed:
      raise RuntimeError("the figure worker is closed")
    try:
      self._jobs.put_nowait((step, tag, render))
    except queue.Full:
      self.dropped += 1

  def close(self) -> None:
    """Draws what is queued, then stops the thread; idempotent."""
    if self._closed:
      return
    self._closed = True
    self._jobs.put(_STOP)  # blocks only while the queue is full, i.e. until the thread takes the next job
    self._thread.join()
    if self.dropped:
      print(f"lensjax: {self.dropped} heat map(s) were dropped because drawing fell behind logging; "
            "raise logging.log_every", file=sys.stderr)

  def _run(self) -> None:
    while True:
      job = self._jobs.get()
      if job is _STOP:
        return
      step, tag, render = job
      try:
        self._write(step, tag, render())
      except Exception as error:  # pylint: disable=broad-except  # a figure must never stop training
        self.failed += 1
        if self.failed == 1:
          print(f"lensjax: heat map {tag} at step {step} was not drawn ({error!r}); later failures are counted "
                "silently", file=sys.stderr)
