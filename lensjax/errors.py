"""Errors meant for people: one sentence naming what is wrong and how to fix it.

Anything raised as `InputError` makes the CLI exit with code 2 and print the
message alone (no traceback): bad config keys or values, missing or malformed
data files, a checkpoint that does not fit the model.
"""


class InputError(Exception):
  """Bad input from the user (config, arguments, data, checkpoint)."""


class TrainingHalted(Exception):
  """Training stopped on a non-finite loss or gradient (policy `halt`); exit code 3."""


class CheckpointWriteError(Exception):
  """A checkpoint could not be written (a full disk, a read-only directory); the CLI prints it and exits 1."""
