"""The lens protocol: one object owns a statistic's state, its in-jit half and its host half.

A lens declares what it needs from the step (`needs`: names of the model's
CAPTURES, and TOKEN_ENTROPY for the loss's per-token entropies), owns a slice
of `TrainState.lens_state` (`init`), maps `(its state, StepView)` to
`(new state, metrics)` inside the jitted step (`update`), and writes what only
the host can (`write`: histograms, heat maps, event logs, per-step array
files) from the fetched record of a logging step.

The plain step runs the `every_step` lenses; the logging step, the held-out
evaluation and the probe run all of theirs (`view.logging` is True there).
Metric values are scalars, vectors [L] or matrices [L, H]; per-unit arrays
[L, F] are named `units/...` and stay on the host side (histograms, events).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, Sequence

import jax

TOKEN_ENTROPY = "token_entropy"  # per-token entropy (and, with target_probs, target entropy and KL) from the loss


class StepView(NamedTuple):
  """What a lens may look at; all of it already computed by the step."""
  batch: dict
  tokens: dict  # per-token float32 [B, T]: nll, and when a lens needs TOKEN_ENTROPY the entropies
  captured: dict  # the model's CAPTURES a lens asked for, per layer
  loss: jax.Array
  params: Any  # θ_t
  new_params: Any  # θ_{t+1} (θ_t in evaluation)
  grads: Any  # None in evaluation
  updates: Any  # δ_t = θ_{t+1} − θ_t (None in evaluation)
  opt_state: Any  # after this step's update (None in evaluation)
  step: jax.Array
  logging: bool  # Python bool: the logging variant (or an evaluation), not the plain step


class HostSink(Protocol):
  """Where a lens's host half writes; the run logger provides it (only process 0 writes)."""

  def histogram(self, step: int, tag: str, values) -> None: ...

  def heatmap(self, step: int, tag: str, matrix_RxC, units: str = "") -> None:
    """A layer x head heat map; `units` labels its colour bar (the range comes from the data)."""

  def layer_history_heatmap(self, step: int, name: str, vector_L, units: str = "") -> None:
    """A layer x logging-step heat map of `name` up to this step."""

  def event(self, log: str, step: int, record: dict) -> None: ...

  def arrays(self, step: int, name: str, arrays: dict) -> None:
    """Writes one step's named arrays (float32) to RUNDIR/<name>/step_{step:08d}.npz, replacing that step's file."""


class Lens:
  """A statistic of the train step. Subclasses set `name` and override what they use."""
  name: str = ""
  every_step: bool = False  # also in the plain step (it must see every step)
  stateful: bool = False  # keeps a slice of the train state (then `init` returns it)
  needs: frozenset[str] = frozenset()
  resume_keys: tuple[str, ...] = ()  # config keys that fix the shape or meaning of its state
  event_logs: tuple[str, ...] = ()  # WORKDIR/<name>.jsonl files its host half writes events to
  array_dirs: tuple[str, ...] = ()  # WORKDIR/<name>/ folders of per-step .npz files its host half writes

  def init(self, params) -> Any:
    """Its slice of the train state (a pytree of arrays), or None when it keeps none."""
    return None

  def update(self, state, view: StepView) -> tuple[Any, dict]:
    return state, {}

  def write(self, step: int, record: dict, sink: HostSink, prefix: str = "") -> None:
    """The host half: `record` is one step's fetched metrics (NumPy, `units/...` included), written once
    they arrive; a lens writes only what its own names in `record` call for. `prefix` is that of `Renamed`."""


class Renamed(Lens):
  """Another stateless lens's metrics under a prefix (`eval/`, `probe/`)."""

  def __init__(self, prefix: str, lens: Lens):
    self.prefix, self.inner = prefix, lens
    self.name, self.needs = prefix + lens.name, lens.needs

  def update(self, state, view):
    _, metrics = self.inner.update(None, view)
    return state, {self.prefix + name: value for name, value in metrics.items()}

  def write(self, step, record, sink, prefix=""):
    self.inner.write(step, record, sink, self.prefix + prefix)


def needs_of(lenses: Sequence[Lens]) -> frozenset[str]:
  return frozenset().union(*(lens.needs for lens in lenses))


def init_states(lenses: Sequence[Lens], params) -> dict:
  """`TrainState.lens_state`: the slices of the stateful lenses, by name."""
  return {lens.name: lens.init(params) for lens in lenses if lens.stateful}


def stateful_names(lenses: Sequence[Lens]) -> list[str]:
  """The names under which `init_states` keeps state, known without building anything."""
  return sorted(lens.name for lens in lenses if lens.stateful)


def run(lenses: Sequence[Lens], states: dict, view: StepView) -> tuple[dict, dict]:
  """Every lens's in-jit half; the states of lenses not run here pass through unchanged."""
  new_states, metrics = dict(states), {}
  for lens in lenses:
    state, lens_metrics = lens.update(states.get(lens.name), view)
    if state is not None:
      new_states[lens.name] = state
    metrics.update(lens_metrics)
  return new_states, metrics


def event_logs(lenses: Sequence[Lens]) -> tuple[str, ...]:
  return tuple(sorted({log for lens in lenses for log in lens.event_logs}))


def array_dirs(lenses: Sequence[Lens]) -> tuple[str, ...]:
  return tuple(sorted({name for lens in lenses for name in lens.array_dirs}))


def resume_keys(lenses: Sequence[Lens]) -> tuple[str, ...]:
  return tuple(sorted({key for lens in lenses for key in lens.resume_keys}))
