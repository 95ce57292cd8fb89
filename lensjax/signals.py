"""SIGTERM (a scheduler's preemption notice) as a flag that a loop checks between units of work."""

from __future__ import annotations

import signal


class SigtermFlag:
  """While entered, SIGTERM sets `requested` instead of killing the process; the previous handler comes back on exit."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
