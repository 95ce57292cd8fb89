"""SIGTERM (a scheduler's preemption notice) as a flag that a loop checks between units of work."""

from __future__ import annotations

import signal


class SigtermFlag:
  """While entered, SIGTERM sets `requested` instead of killing the process; the previous handler comes back on exit.

  Flags nest: one entered inside another starts requested when the outer one already is (a SIGTERM that came
  while the process started counts for the loop entered later), and a SIGTERM it catches is passed on to the
  outer flag too (the sweep around a member's training learns of it).
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    outer = self._outer()
    if outer is not None and outer.requested:
      self.requested = True
    return self

  def _outer(self) -> SigtermFlag | None:
    owner = getattr(self._previous, "__self__", None)
    return owner if isinstance(owner, SigtermFlag) else None

  def _handle(self, signum, frame):
    self.requested = True
    outer = self._outer()
    if outer is not None:
      outer._handle(signum, frame)

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
