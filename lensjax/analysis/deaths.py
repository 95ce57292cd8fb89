"""Why FFN units die: the dynamics of training, outlier updates, or chance? (`lensjax deaths`; NumPy only.)

Wild & Anderson (2024) read neuron death as "primarily driven by the dynamics
of training, rather than occurring randomly or as a result of outliers". A
test of that must not be circular: a unit that stopped firing gets no
gradient, so its Adam second moment decays as β2^k by construction, and a
small v̂ when it is declared dead proves nothing. So every quantity here is
measured *before the unit stopped firing*.

Data. The unit trace (stats.unit_trace) at the logging steps t_0 < t_1 < ...
(per unit: pre-activation mean and std over the batch's real tokens, firing
frequency, the norm of the step's update of its input weights, steps since it
last fired) and the run's neuron_events.jsonl. A "died" event at logging step
E carries steps_since_active = E − last_active, where last_active is the last
step on which the unit fired on a real token (dead_units.py), so

    s_last = E − steps_since_active    (−1: it never fired).

A unit that died more than once counts with its first death only (a revived
unit's later deaths are not independent of the first).

Features, over the window of the K = `window_points` trace points ending at
the last logging step t ≤ s_last (all of them before it stopped firing; a
death with fewer than K such points, a never-firing unit included, is
excluded and counted):
  f1 `pre_mean_slope`: the least-squares slope of pre_mean against the step,
     per 1,000 steps, divided by the unit's own pre_std at the window's first
     point (in start-of-window standard deviations per 1,000 steps);
  f2 `frequency_slope`: the least-squares slope of the firing frequency, per
     1,000 steps;
  f3 `update_ratio`: w_in_update at the window's last point divided by the
     median of w_in_update over its K − 1 earlier points (an outlier update
     makes it ≫ 1).
A feature that cannot be formed (a zero std or median) is NaN and left out of
every mean; the counts say how many remain.

Comparisons.
  (a) Matched survivors: for each dying unit, the `matches` (5) units of its
      layer that never die in the run whose firing frequency at the window's
      first point is closest to its own (ties: the lower unit index), their
      features over the same time points. Per feature: the mean paired
      difference D = f(dying) − mean f(its matches), and Cohen's d of the
      paired differences, d_z = mean(D) / sd(D) (ddof 1), each with a 95%
      percentile bootstrap interval (2,000 resamples of the dying units).
  (b) Shuffled death times: `permutations` times, the observed death windows
      of each layer are handed to units drawn at random among the units of
      that layer still firing at the window's last point t_j, and the mean
      feature of the drawn units is the null statistic. "Still firing" is
      what a dying unit's own window end satisfies: the unit fired on a real
      token in [t_j, t_{j+1}], i.e. t_{j+1} − steps_since_active(t_{j+1}) ≥ t_j
      (at the trace's last point: it fired at t_j; a trace without
      steps_since_active: frequency > 0 at t_j or t_{j+1}). Merely "not dead
      yet" would admit units in the silent stretch before their own death,
      whose windows hold their fall to zero and would bias the null. The units come from the layer's null pool, a uniform random
      sample of `null_sample` of its F units. When the pool is the whole
      layer (F ≤ null_sample) the draws are without replacement within a
      permutation, exactly as the claim's null reads. A smaller pool is
      drawn with replacement: that stands for without-replacement draws from
      all F units (a null variance ∝ 1/D instead of (1 − D/F)/D for D deaths,
      slightly conservative), where without replacement from the pool itself
      would make the null too narrow (∝ (1 − D/pool)/D). The p-value is one-sided in the
      predicted direction: (1 + #{null ≤ observed}) / (1 + N) for f1 and f2
      (a decline), (1 + #{null ≥ observed}) / (1 + N) for f3 ("greater": an
      outlier update); `p_two_sided` = min(1, 2·min of both one-sided ones).
      The pooled null is the mean over all layers' draws of one permutation.
  (c) Level-matched shuffled death times (`null_matched`; added after the
      first real results, as a post-hoc check of a firing-level confound: on
      those runs the null (b) gave p ≈ 1 for f2 while (a) showed a steeper
      decline than matched survivors, because (b)'s random units fire far
      more at those times and absolute frequencies fall faster from a high
      level). As (b), but each death's window goes to a unit drawn uniformly,
      with replacement, among the `level_candidates` (20) units of the layer's
      null pool still firing at t_j whose firing frequency at the window's
      first point is closest to the dying unit's own there (ties: the lower
      pool index); fewer eligible units: all of them. Nearest-k rather than
      frequency-quantile bins, because dying units crowd the pool's
      low-frequency tail, where a quantile bin would span levels far from
      theirs, while k nearest follow each death's own level; with
      replacement, because k candidates shared by many deaths at one level
      would run out without it. Same p-values and pooling as (b). The
      readings below still use (b) only.
  (d) `match_on` (added after the first real results, as a post-hoc check of
      regression to the mean): (a) and (c) match on the frequency at ONE point,
      the window's first ("start", the default and the reading's). Units
      picked for a low level at one moment tend to rise afterwards, so the
      matched survivors and (c)'s draws, caught low there, have a rising
      window (on the real runs their frequency slopes are positive), which
      favours "dying units decline more". With "window-mean" both match on the
      mean frequency over the window's own K points instead: the dying unit's
      from its block, every pool unit's from its trace at the same points; a
      window's mean and its least-squares slope are uncorrelated for a
      stationary process, so no single point is selected. (a)'s survivors then
      come from the null pool's never-dying units (the `matches` closest in
      window mean; ties: the lower pool index), since the extract holds no
      other survivor's window; (c) as above with that level. Matching on the
      mean over the K points *before* the window would be cleaner still, but
      the extract keeps a dying unit's frequency over its window only (its
      earlier points only when it is in the null pool), so it is not offered.
      `counts.excluded_by_matching` counts deaths a matching mode leaves out
      (none for either: both use only the window's points).

Sampling. A layer with more than `max_deaths_per_layer` (2,000) included
deaths is analysed on a uniform random sample of that many (seeded by the
seed and the layer; 0: no limit); the others count as `not_sampled`. The
extract grows by 0.25 KB and the matching by one search of the layer per
death, so without it the widest layers (tens of thousands of deaths) would
cost tens of megabytes and minutes while adding nothing to 2,000 deaths'
precision (a d_z interval of about ±0.05). Every comparison uses the same
sample, so each null is still the null of the statistic observed.

Readings, fixed before any data (ALPHA = 0.05, MIN_EFFECT = 0.5, at least
MIN_DEATHS = 5 included deaths in the group, otherwise "too_few_deaths"):
  "dynamics" ⇐ f1 and f2 both decline beyond the matched survivors
      (d_z ≤ −0.5) and beyond the shuffled-time null (p < 0.05), while the
      last updates are not outliers (f3 like the survivors': |d_z| < 0.5);
  "outliers" ⇐ no such decline in f1 or f2, but f3 ≫ the survivors'
      (d_z ≥ 0.5) and above the null (p < 0.05);
  "random"   ⇐ indistinguishable from the null on every feature
      (p_two_sided ≥ 0.05 for f1, f2 and f3);
  "mixed"    ⇐ anything else.

The numbers always come from an `Extract`: the time points, the windows of
every included dying unit and its matches, the whole traces of the null pool
and the still-firing flags, in float16 scaled per unit (float32 scales; stored as
byte planes so that deflate compresses them: about 4.2 MB for 6 layers x 8,192
units x 110 points, 1,024 pool units per layer and 1,800 deaths, plus about
0.25 KB per further death). The full trace goes through the same extract in
memory, so `--from-extract` reproduces the same report exactly; the
extract's numbers are the reference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

import numpy as np

from lensjax.errors import InputError

FEATURES = ("pre_mean_slope", "frequency_slope", "update_ratio")
DIRECTION = {"pre_mean_slope": "less", "frequency_slope": "less", "update_ratio": "greater"}
TRACE_FIELDS = ("pre_mean", "pre_std", "frequency", "w_in_update")  # what the features read
WINDOW_FIELDS = ("pre_mean", "frequency", "w_in_update")  # kept over the whole window of a dying unit
DEFAULT_WINDOW_POINTS, DEFAULT_MATCHES, DEFAULT_NULL_SAMPLE, DEFAULT_PERMUTATIONS = 10, 5, 1024, 1000
DEFAULT_LEVEL_CANDIDATES = 20  # the level-matched null's nearest-in-frequency candidates per death
DEFAULT_MAX_DEATHS_PER_LAYER = 2000  # included deaths analysed per layer, a uniform sample beyond: docstring
EXCLUDED, NOT_SAMPLED = -1, -2  # window_end_D of a death without K points before s_last, of one left out of the sample
MATCH_ON = ("start", "window-mean")  # the firing level the matched comparisons match on: docstring, (d)
MIN_WINDOW_POINTS = 3  # a slope and a median of at least two earlier updates
BOOTSTRAP = 2000
ALPHA, MIN_EFFECT, MIN_DEATHS = 0.05, 0.5, 5
EXTRACT_FORMAT = "lensjax-deaths-extract-1"


@dataclasses.dataclass(frozen=True)
class Deaths:
  """Each unit's first death: layer, unit, the logging step of its "died" event, and s_last, all [D] int64."""
  layer_D: np.ndarray
  unit_D: np.ndarray
  step_D: np.ndarray
  last_fired_D: np.ndarray


def first_deaths(events: Iterable[Mapping]) -> Deaths:
  """The first "died" event of every unit in neuron_events.jsonl records, sorted by (layer, unit)."""
  first: dict[tuple[int, int], tuple[int, int]] = {}
  for number, event in enumerate(events, start=1):
    if event.get("event") != "died":
      continue
    if not all(isinstance(event.get(key), (int, float)) for key in ("step", "layer", "unit", "steps_since_active")):
      raise InputError(f"neuron event {number} ({event}) lacks step, layer, unit or steps_since_active; the file "
                       "is not one that lensjax train wrote.")
    key, step = (int(event["layer"]), int(event["unit"])), int(event["step"])
    if key not in first or step < first[key][0]:
      first[key] = (step, step - int(round(event["steps_since_active"])))
  keys = sorted(first)
  column = lambda values: np.asarray(values, np.int64).reshape(-1)
  return Deaths(column([k[0] for k in keys]), column([k[1] for k in keys]), column([first[k][0] for k in keys]),
                column([first[k][1] for k in keys]))


def window_features(t_xK, pre_mean_xK, pre_std_start_x, frequency_xK, update_xK) -> dict[str, np.ndarray]:
  """The three features of windows of K points (leading axes broadcast): see the module docstring."""
  t_xK = np.asarray(t_xK, np.float64)
  centred_t = t_xK - t_xK.mean(axis=-1, keepdims=True)

  def slope_per_1000(y_xK):
    y_xK = np.asarray(y_xK, np.float64)
    centred_y = y_xK - y_xK.mean(axis=-1, keepdims=True)
    return 1000.0 * np.sum(centred_t * centred_y, axis=-1) / np.sum(centred_t * centred_t, axis=-1)

  std_start = np.asarray(pre_std_start_x, np.float64)
  update_xK = np.asarray(update_xK, np.float64)
  earlier_median = np.median(update_xK[..., :-1], axis=-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    return {"pre_mean_slope": np.where(std_start > 0, slope_per_1000(pre_mean_xK) / std_start, np.nan),
            "frequency_slope": slope_per_1000(frequency_xK),
            "update_ratio": np.where(earlier_median > 0, update_xK[..., -1] / earlier_median, np.nan)}


def encode(x, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
  """float16 values scaled per row by the row's largest |x| (a float32 scale), so that float16's range and
  its 11 significant bits follow each unit's own magnitude; NaN stays NaN."""
  x = np.asarray(x, np.float64)
  with np.errstate(invalid="ignore"):
    largest = np.max(np.where(np.isfinite(x), np.abs(x), 0.0), axis=axis, keepdims=True)
  scale = np.where(largest > 0, largest, 1.0).astype(np.float32)
  return (x / scale).astype(np.float16), np.squeeze(scale, axis=axis)


def decode(values, scale, axis: int = -1) -> np.ndarray:
  return np.asarray(values, np.float64) * np.expand_dims(np.asarray(scale, np.float64), axis)


def byte_planes(values_f16: np.ndarray) -> np.ndarray:
  """uint8 [2, ...]: the low bytes, then the high bytes. Deflate then sees each unit's slowly changing
  sign-and-exponent bytes side by side, which it compresses well, apart from the noisy low bytes."""
  return np.ascontiguousarray(np.moveaxis(values_f16.astype("<f2").view(np.uint8).reshape(values_f16.shape + (2,)),
                                          -1, 0))


def from_byte_planes(planes: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.moveaxis(np.asarray(planes, np.uint8), 0, -1)).view("<f2")[..., 0].astype(np.float16)


@dataclasses.dataclass(frozen=True)
class Extract:
  """Everything the report is computed from (`to_arrays` / `from_arrays`: the --extract file)."""
  steps_P: np.ndarray  # int64: the logging steps of the trace
  units_per_layer: int
  num_layers: int
  window_points: int
  matches: int
  null_sample: int
  sample_seed: int
  dead_window: int
  active_threshold: float
  max_deaths_per_layer: int  # 0: every included death
  firing_rule: str  # how `pool_firing_UxP` was read from the trace
  deaths: Deaths  # every first death, included or not
  window_end_D: np.ndarray  # int64: index into steps_P of the window's last point, else EXCLUDED or NOT_SAMPLED
  survivors_L: np.ndarray  # int64: units of each layer that never die in the run
  block_units_IxM: np.ndarray  # int64 [I, 1 + matches]: the included dying unit, then its matches (−1: none)
  block: dict  # per WINDOW_FIELDS name: (float16 [I, 1 + matches, K], float32 scale [I, 1 + matches])
  block_pre_std_start_IxM: np.ndarray  # float32: pre_std at the window's first point (NaN: no match)
  pool_layer_U: np.ndarray  # int64: the null pool's units, layer by layer
  pool_unit_U: np.ndarray
  pool: dict  # per TRACE_FIELDS name: (float16 [U, P], float32 scale [U])
  pool_firing_UxP: np.ndarray  # bool: still firing at each trace point (fired in [t_j, t_{j+1}])

  def to_arrays(self) -> dict[str, np.ndarray]:
    arrays = {"format": np.asarray(EXTRACT_FORMAT), "steps_P": self.steps_P,
              "firing_rule": np.asarray(self.firing_rule), "window_end_D": self.window_end_D,
              "survivors_L": self.survivors_L, "block_units_IxM": self.block_units_IxM,
              "block_pre_std_start_IxM": self.block_pre_std_start_IxM, "pool_layer_U": self.pool_layer_U,
              "pool_unit_U": self.pool_unit_U,
              "pool_firing_bits": np.packbits(self.pool_firing_UxP, axis=-1)}
    for name in (*_SCALARS, "max_deaths_per_layer"):
      arrays[name] = np.asarray(getattr(self, name))
    for name in ("layer_D", "unit_D", "step_D", "last_fired_D"):
      arrays[f"death_{name}"] = getattr(self.deaths, name)
    for prefix, fields in (("block", self.block), ("pool", self.pool)):
      for name, (values, scale) in fields.items():
        arrays[f"{prefix}_{name}"], arrays[f"{prefix}_{name}_scale"] = byte_planes(values), scale
    return arrays

  @staticmethod
  def from_arrays(arrays: Mapping[str, np.ndarray], source: str = "the extract") -> Extract:
    """The extract back from `to_arrays`' arrays; InputError naming `source` when it is not one."""
    fmt = str(arrays["format"]) if "format" in arrays else None
    if fmt != EXTRACT_FORMAT:
      raise InputError(f"{source} is not an extract of lensjax deaths (format {fmt!r}, expected "
                       f"{EXTRACT_FORMAT!r}); write one with lensjax deaths --workdir RUN --extract FILE.npz.")
    try:
      scalars = {name: kind(arrays[name]) for name, kind in _SCALARS.items()}
      # Extracts written before the sampling existed analysed every included death.
      scalars["max_deaths_per_layer"] = int(arrays.get("max_deaths_per_layer", 0))
      deaths = Deaths(*(np.asarray(arrays[f"death_{name}"], np.int64)
                        for name in ("layer_D", "unit_D", "step_D", "last_fired_D")))
      steps_P = np.asarray(arrays["steps_P"], np.int64)
      fields = lambda prefix, names: {name: (from_byte_planes(arrays[f"{prefix}_{name}"]),
                                             np.asarray(arrays[f"{prefix}_{name}_scale"])) for name in names}
      firing = np.unpackbits(np.asarray(arrays["pool_firing_bits"]), axis=-1, count=len(steps_P)).astype(bool)
      return Extract(steps_P=steps_P, **scalars, firing_rule=str(arrays["firing_rule"]), deaths=deaths,
                     window_end_D=np.asarray(arrays["window_end_D"], np.int64),
                     survivors_L=np.asarray(arrays["survivors_L"], np.int64),
                     block_units_IxM=np.asarray(arrays["block_units_IxM"], np.int64),
                     block=fields("block", WINDOW_FIELDS),
                     block_pre_std_start_IxM=np.asarray(arrays["block_pre_std_start_IxM"], np.float32),
                     pool_layer_U=np.asarray(arrays["pool_layer_U"], np.int64),
                     pool_unit_U=np.asarray(arrays["pool_unit_U"], np.int64), pool=fields("pool", TRACE_FIELDS),
                     pool_firing_UxP=firing)
    except KeyError as missing:
      raise InputError(f"{source} lacks the array {missing}; write it again with lensjax deaths --extract.") from None


_SCALARS = {"units_per_layer": int, "num_layers": int, "window_points": int, "matches": int, "null_sample": int,
            "sample_seed": int, "dead_window": int, "active_threshold": float}


def build_extract(steps_P, trace: Mapping[str, np.ndarray], deaths: Deaths, *, dead_window: int,
                  active_threshold: float, window_points: int = DEFAULT_WINDOW_POINTS,
                  matches: int = DEFAULT_MATCHES, null_sample: int = DEFAULT_NULL_SAMPLE, seed: int = 0,
                  max_deaths_per_layer: int = DEFAULT_MAX_DEATHS_PER_LAYER) -> Extract:
  """The extract of a full trace: `trace` maps TRACE_FIELDS (and optionally steps_since_active) to [P, L, F]."""
  steps_P = np.asarray(steps_P, np.int64)
  frequency_PxLxF = np.asarray(trace["frequency"])
  P, L, F = frequency_PxLxF.shape
  K = window_points
  died_LxF = np.zeros((L, F), bool)
  died_LxF[deaths.layer_D, deaths.unit_D] = True
  # The last trace point at or before s_last, and whether K points end there.
  end_D = np.searchsorted(steps_P, deaths.last_fired_D, side="right") - 1
  included_D = (deaths.last_fired_D >= 0) & (end_D - (K - 1) >= 0)
  window_end_D = np.where(included_D, end_D, EXCLUDED)
  for layer in range(L):
    candidates = np.flatnonzero(included_D & (deaths.layer_D == layer))
    if max_deaths_per_layer and len(candidates) > max_deaths_per_layer:
      kept = np.random.default_rng([seed, 4, layer]).choice(candidates, max_deaths_per_layer, replace=False)
      window_end_D[np.setdiff1d(candidates, kept)] = NOT_SAMPLED
  rows = np.flatnonzero(window_end_D >= 0)
  layer_I, end_I = deaths.layer_D[rows], end_D[rows]

  block_units_IxM = np.full((len(rows), 1 + matches), -1, np.int64)
  for row, death in enumerate(rows):
    layer, unit, start = deaths.layer_D[death], deaths.unit_D[death], end_D[death] - (K - 1)
    survivors = np.flatnonzero(~died_LxF[layer])
    distance = np.abs(frequency_PxLxF[start, layer, survivors].astype(np.float64)
                      - float(frequency_PxLxF[start, layer, unit]))
    closest = survivors[np.lexsort((survivors, distance))[:matches]]
    block_units_IxM[row, 0], block_units_IxM[row, 1:1 + len(closest)] = unit, closest

  missing_IxM = block_units_IxM < 0
  points_IxK = end_I[:, None] + np.arange(-(K - 1), 1)[None, :]
  units_IxM = np.maximum(block_units_IxM, 0)

  def windows(name):
    values = np.asarray(trace[name])[points_IxK[:, None, :], layer_I[:, None, None], units_IxM[:, :, None]]
    return np.where(missing_IxM[:, :, None], np.nan, values.astype(np.float64))

  block = {name: encode(windows(name)) for name in WINDOW_FIELDS}
  pre_std_start = np.asarray(trace["pre_std"])[points_IxK[:, :1], layer_I[:, None], units_IxM].astype(np.float64)
  block_pre_std_start = np.where(missing_IxM, np.nan, pre_std_start).astype(np.float32)

  pool_layers, pool_units = [], []
  for layer in range(L):
    size = min(F, null_sample)
    chosen = np.sort(np.random.default_rng([seed, 0, layer]).choice(F, size, replace=False))
    pool_layers.append(np.full(size, layer, np.int64))
    pool_units.append(chosen.astype(np.int64))
  pool_layer_U, pool_unit_U = np.concatenate(pool_layers), np.concatenate(pool_units)
  pool_PxU = lambda name: np.asarray(trace[name])[:, pool_layer_U, pool_unit_U]
  next_point = np.minimum(np.arange(P) + 1, P - 1)  # t_{j+1}; the last point looks at itself
  if "steps_since_active" in trace:
    last_active_PxU = steps_P[:, None] - pool_PxU("steps_since_active").astype(np.float64)
    firing_rule = "t_{j+1} - steps_since_active(t_{j+1}) >= t_j"
    firing_PxU = last_active_PxU[next_point] >= steps_P[:, None]
  else:
    fired_PxU = pool_PxU("frequency") > 0
    firing_rule, firing_PxU = "frequency > 0 at t_j or t_{j+1}", fired_PxU | fired_PxU[next_point]
  pool = {name: encode(pool_PxU(name).T) for name in TRACE_FIELDS}
  return Extract(steps_P=steps_P, units_per_layer=F, num_layers=L, window_points=K, matches=matches,
                 null_sample=null_sample, sample_seed=seed, dead_window=dead_window,
                 active_threshold=float(active_threshold), max_deaths_per_layer=int(max_deaths_per_layer),
                 firing_rule=firing_rule, deaths=deaths,
                 window_end_D=window_end_D.astype(np.int64), survivors_L=np.sum(~died_LxF, axis=1).astype(np.int64),
                 block_units_IxM=block_units_IxM, block=block, block_pre_std_start_IxM=block_pre_std_start,
                 pool_layer_U=pool_layer_U, pool_unit_U=pool_unit_U, pool=pool, pool_firing_UxP=firing_PxU.T.copy())


def null_draws(eligible_DxU: np.ndarray, permutations: int, rng: np.random.Generator,
               replace: bool = False) -> np.ndarray:
  """int64 [N, D]: for each of N permutations, a unit for each death, uniform among its eligible units (without
  `replace`: among those not yet drawn in that permutation, deaths in order); −1 when none is left."""
  num_deaths, num_units = eligible_DxU.shape
  used_NxU = np.zeros((permutations, num_units), bool)
  picks_NxD = np.full((permutations, num_deaths), -1, np.int64)
  for death in range(num_deaths):
    candidates = np.flatnonzero(eligible_DxU[death])
    if candidates.size == 0:
      continue
    if replace:
      picks_NxD[:, death] = candidates[rng.integers(candidates.size, size=permutations)]
      continue
    waiting = np.arange(permutations)
    # Rejection: a uniform candidate that is still free is a uniform draw among the free ones.
    for _ in range(8):
      choice = candidates[rng.integers(candidates.size, size=waiting.size)]
      free = ~used_NxU[waiting, choice]
      picks_NxD[waiting[free], death] = choice[free]
      used_NxU[waiting[free], choice[free]] = True
      waiting = waiting[~free]
      if waiting.size == 0:
        break
    for n in waiting:  # the few permutations whose free candidates are scarce: draw among them exactly
      free_candidates = candidates[~used_NxU[n, candidates]]
      if free_candidates.size:
        pick = free_candidates[rng.integers(free_candidates.size)]
        picks_NxD[n, death], used_NxU[n, pick] = pick, True
  return picks_NxD


def level_matched_draws(eligible_DxU: np.ndarray, level_DxU: np.ndarray, target_D: np.ndarray, candidates: int,
                        permutations: int, rng: np.random.Generator) -> np.ndarray:
  """int64 [N, D]: for each death, N draws with replacement, uniform among the `candidates` eligible units whose
  level (`level_DxU`) is closest to its own (`target_D`; ties: the lower unit index); −1 when none is eligible."""
  num_deaths = eligible_DxU.shape[0]
  picks_NxD = np.full((permutations, num_deaths), -1, np.int64)
  for death in range(num_deaths):
    units = np.flatnonzero(eligible_DxU[death])
    if units.size == 0:
      continue
    distance = np.abs(np.asarray(level_DxU[death, units], np.float64) - float(target_D[death]))
    nearest = units[np.lexsort((units, distance))[:candidates]]
    picks_NxD[:, death] = nearest[rng.integers(nearest.size, size=permutations)]
  return picks_NxD


def _nanmean(x, axis=None):
  x = np.asarray(x, np.float64)
  finite = np.isfinite(x)
  count = np.sum(finite, axis=axis)
  total = np.sum(np.where(finite, x, 0.0), axis=axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _number(x):
  """A JSON number, or None for NaN and infinities."""
  return float(x) if x is not None and math.isfinite(float(x)) else None


def paired_comparison(dying_I, matched_I, rng: np.random.Generator) -> dict:
  """Mean paired difference and Cohen's d_z of the differences, with 95% percentile bootstrap intervals."""
  differences = np.asarray(dying_I, np.float64) - np.asarray(matched_I, np.float64)
  pairs = np.isfinite(differences)
  differences, dying_I, matched_I = differences[pairs], np.asarray(dying_I)[pairs], np.asarray(matched_I)[pairs]
  n = differences.size
  result = {"pairs": int(n), "dying_mean": None, "survivor_mean": None, "mean_difference": None,
            "mean_difference_ci95": None, "cohens_d": None, "cohens_d_ci95": None,
            "effect_size": "Cohen's d_z of the paired differences: mean(D) / sd(D), ddof 1"}
  if n == 0:
    return result
  result.update(dying_mean=_number(np.mean(dying_I)), survivor_mean=_number(np.mean(matched_I)),
                mean_difference=_number(np.mean(differences)))
  if n < 2:
    return result
  # A spread below rounding (a resample of one repeated difference) has no d_z, not an astronomic one.
  floor = 1e-9 * np.max(np.abs(differences))

  def d_z(x):
    sd = np.std(x, axis=-1, ddof=1)
    return np.where(sd > floor, np.mean(x, axis=-1) / np.where(sd > floor, sd, 1.0), np.nan)

  with np.errstate(invalid="ignore", divide="ignore"):
    result["cohens_d"] = _number(d_z(differences))
    resampled = differences[rng.integers(n, size=(BOOTSTRAP, n))]
    means, ds = np.mean(resampled, axis=1), d_z(resampled)
  result["mean_difference_ci95"] = [_number(q) for q in np.percentile(means, [2.5, 97.5])]
  ds = ds[np.isfinite(ds)]
  if ds.size:
    result["cohens_d_ci95"] = [_number(q) for q in np.percentile(ds, [2.5, 97.5])]
  return result


def null_comparison(observed: float, null_N, direction: str) -> dict:
  """The null's summary and samples, the one-sided p-value in `direction` and the two-sided one."""
  null_N = np.asarray(null_N, np.float64)
  finite = null_N[np.isfinite(null_N)]
  result = {"mean": None, "std": None, "q025": None, "q500": None, "q975": None, "permutations": int(finite.size),
            "samples": [_number(x) for x in null_N], "p_value": None, "direction": direction, "p_two_sided": None}
  if finite.size == 0:
    return result
  q025, q500, q975 = np.percentile(finite, [2.5, 50.0, 97.5])
  result.update(mean=_number(np.mean(finite)), std=_number(np.std(finite)), q025=_number(q025), q500=_number(q500),
                q975=_number(q975))
  if not math.isfinite(observed):
    return result
  less = (1 + np.sum(finite <= observed)) / (1 + finite.size)
  greater = (1 + np.sum(finite >= observed)) / (1 + finite.size)
  result.update(p_value=float(less if direction == "less" else greater), p_two_sided=float(min(1.0, 2 * min(less, greater))))
  return result


def reading(features: Mapping[str, dict], included: int) -> str:
  """The reading the module docstring fixes, from one group's feature summaries."""
  if included < MIN_DEATHS:
    return "too_few_deaths"
  p = lambda f: features[f]["null"]["p_value"]
  d = lambda f: features[f]["matched"]["cohens_d"]
  declines = lambda f: p(f) is not None and p(f) < ALPHA and d(f) is not None and d(f) <= -MIN_EFFECT
  update_outlier = (p("update_ratio") is not None and p("update_ratio") < ALPHA and d("update_ratio") is not None
                    and d("update_ratio") >= MIN_EFFECT)
  update_like_survivors = d("update_ratio") is not None and abs(d("update_ratio")) < MIN_EFFECT
  if declines("pre_mean_slope") and declines("frequency_slope") and update_like_survivors:
    return "dynamics"
  if not declines("pre_mean_slope") and not declines("frequency_slope") and update_outlier:
    return "outliers"
  two_sided = [features[f]["null"]["p_two_sided"] for f in FEATURES]
  if all(p2 is not None and p2 >= ALPHA for p2 in two_sided):
    return "random"
  return "mixed"


def death_report(extract: Extract, permutations: int = DEFAULT_PERMUTATIONS, seed: int = 0,
                 level_candidates: int = DEFAULT_LEVEL_CANDIDATES, match_on: str = "start") -> dict:
  """The report (JSON-ready) per layer and pooled: counts, features, matched and both null comparisons, reading.
  `match_on` (MATCH_ON): the firing level both matched comparisons match on (module docstring, (d))."""
  if match_on not in MATCH_ON:
    raise InputError(f"match_on is {match_on!r}; it must be one of {', '.join(MATCH_ON)}.")
  e, K = extract, extract.window_points
  steps_P = e.steps_P
  rows = np.flatnonzero(e.window_end_D >= 0)
  layer_I, end_I = e.deaths.layer_D[rows], e.window_end_D[rows]
  offsets_K = np.arange(-(K - 1), 1)
  t_IxK = steps_P[end_I[:, None] + offsets_K[None, :]]
  block = {name: decode(*e.block[name]) for name in WINDOW_FIELDS}
  block_features = window_features(t_IxK[:, None, :], block["pre_mean"], e.block_pre_std_start_IxM,
                                   block["frequency"], block["w_in_update"])  # [I, 1 + matches]
  dying = {f: block_features[f][:, 0] for f in FEATURES}
  matched = {f: _nanmean(block_features[f][:, 1:], axis=1) for f in FEATURES}

  pool = {name: decode(*e.pool[name]) for name in TRACE_FIELDS}  # [U, P]
  pool_features = {}  # window end -> feature -> [U]
  for end in np.unique(end_I):
    points = end + offsets_K
    pool_features[int(end)] = window_features(steps_P[points][None, :], pool["pre_mean"][:, points],
                                              pool["pre_std"][:, points[0]], pool["frequency"][:, points],
                                              pool["w_in_update"][:, points])
  if match_on == "start":
    target_I = block["frequency"][:, 0, 0]  # the dying unit's own level at its window's first point
    pool_level = {end: pool["frequency"][:, end - (K - 1)] for end in pool_features}
  else:  # "window-mean": the mean over the window's own K points, the dying unit's and each pool unit's
    target_I = np.mean(block["frequency"][:, 0, :], axis=1)
    pool_level = {end: np.mean(pool["frequency"][:, end + offsets_K], axis=1) for end in pool_features}
    # Matched survivors among the pool's never-dying units: the extract holds no other survivor's whole window.
    died = set(zip(e.deaths.layer_D.tolist(), e.deaths.unit_D.tolist()))
    pool_survivor_U = np.array([(l, u) not in died for l, u in zip(e.pool_layer_U.tolist(), e.pool_unit_U.tolist())],
                               bool)
    matched = {f: np.full(len(rows), np.nan) for f in FEATURES}
    for row, (layer, end) in enumerate(zip(layer_I.tolist(), end_I.tolist())):
      candidates = np.flatnonzero((e.pool_layer_U == layer) & pool_survivor_U)
      distance = np.abs(pool_level[end][candidates] - target_I[row])
      closest = candidates[np.lexsort((candidates, distance))[:e.matches]]
      for f in FEATURES:
        matched[f][row] = _nanmean(pool_features[end][f][closest]) if closest.size else np.nan
  null_values = {f: [] for f in FEATURES}  # per layer: [N, D_l] feature values of the drawn units
  level_values = {f: [] for f in FEATURES}  # the same for the level-matched null
  for layer in range(e.num_layers):
    in_layer = np.flatnonzero(layer_I == layer)
    members = np.flatnonzero(e.pool_layer_U == layer)
    ends = end_I[in_layer]
    eligible_DxU = e.pool_firing_UxP[members][:, ends].T
    picks_NxD = null_draws(eligible_DxU, permutations, np.random.default_rng([seed, 1, layer]),
                           replace=len(members) < e.units_per_layer)
    level_DxU = (np.stack([pool_level[int(end)][members] for end in ends]) if len(ends)
                 else np.zeros((0, len(members))))
    level_picks_NxD = level_matched_draws(eligible_DxU, level_DxU, target_I[in_layer], level_candidates,
                                          permutations, np.random.default_rng([seed, 3, layer]))
    for picks, out in ((picks_NxD, null_values), (level_picks_NxD, level_values)):
      for f in FEATURES:
        values = np.full(picks.shape, np.nan)
        for column, end in enumerate(ends):
          drawn = picks[:, column]
          ok = drawn >= 0
          values[ok, column] = pool_features[int(end)][f][members[drawn[ok]]]
        out[f].append(values)

  deaths_per_layer = np.bincount(e.deaths.layer_D, minlength=e.num_layers)
  never_fired = np.bincount(e.deaths.layer_D[e.deaths.last_fired_D < 0], minlength=e.num_layers)
  excluded_per_layer = np.bincount(e.deaths.layer_D[e.window_end_D == EXCLUDED], minlength=e.num_layers)
  not_sampled_per_layer = np.bincount(e.deaths.layer_D[e.window_end_D == NOT_SAMPLED], minlength=e.num_layers)
  pool_per_layer = np.bincount(e.pool_layer_U, minlength=e.num_layers)

  def group(index: int, dying_I: dict, matched_I: dict, null_NxD: dict, level_NxD: dict, counts: dict) -> dict:
    features = {}
    for number, f in enumerate(FEATURES):
      observed = _nanmean(dying_I[f])
      features[f] = {"observed_mean": _number(observed), "observed_units": int(np.sum(np.isfinite(dying_I[f]))),
                     "matched": paired_comparison(dying_I[f], matched_I[f],
                                                  np.random.default_rng([seed, 2, index, number]))}
      for key, draws in (("null", null_NxD[f]), ("null_matched", level_NxD[f])):
        null_N = _nanmean(draws, axis=1) if draws.shape[1] else np.full(permutations, np.nan)
        features[f][key] = null_comparison(float(observed), null_N, DIRECTION[f])
        features[f][key]["shortfall_draws"] = int(np.sum(~np.isfinite(draws)))
    counts["included"] = len(dying_I[FEATURES[0]])
    return {"counts": counts, "features": features, "reading": reading(features, counts["included"])}

  layers = {}
  for layer in range(e.num_layers):
    chosen = layer_I == layer
    counts = {"deaths": int(deaths_per_layer[layer]), "excluded": int(excluded_per_layer[layer]),
              "not_sampled": int(not_sampled_per_layer[layer]),
              "never_fired": int(never_fired[layer]), "survivors": int(e.survivors_L[layer]),
              "null_pool": int(pool_per_layer[layer]), "excluded_by_matching": 0}
    layers[str(layer)] = group(layer, {f: v[chosen] for f, v in dying.items()},
                               {f: v[chosen] for f, v in matched.items()},
                               {f: null_values[f][layer] for f in FEATURES},
                               {f: level_values[f][layer] for f in FEATURES}, counts)
  pooled_counts = {key: sum(layers[str(l)]["counts"][key] for l in range(e.num_layers))
                   for key in ("deaths", "excluded", "not_sampled", "never_fired", "survivors", "null_pool",
                               "excluded_by_matching")}
  # Permutation n of the pooled null is every layer's draws of permutation n: each layer keeps its death times.
  pooled_null = {f: np.concatenate(null_values[f], axis=1) for f in FEATURES}
  pooled_level = {f: np.concatenate(level_values[f], axis=1) for f in FEATURES}
  pooled = group(e.num_layers, dying, matched, pooled_null, pooled_level, pooled_counts)
  return {"trace_points": int(len(steps_P)), "first_step": int(steps_P[0]) if len(steps_P) else None,
          "last_step": int(steps_P[-1]) if len(steps_P) else None, "window_points": K, "matches": e.matches,
          "null_sample": e.null_sample, "permutations": permutations, "seed": seed, "sample_seed": e.sample_seed,
          "level_candidates": level_candidates, "match_on": match_on,
          "matched_from": "the layer's survivors" if match_on == "start" else "the null pool's survivors",
          "max_deaths_per_layer": e.max_deaths_per_layer,
          "dead_window": e.dead_window, "active_threshold": e.active_threshold, "firing_rule": e.firing_rule,
          "units_per_layer": e.units_per_layer, "num_layers": e.num_layers,
          "thresholds": {"alpha": ALPHA, "min_effect": MIN_EFFECT, "min_deaths": MIN_DEATHS},
          "layers": layers, "pooled": pooled}


def summary_text(report: dict) -> str:
  """A few lines per group: counts, each feature's observed mean, matched d_z [interval], null p, reading."""
  lines = [f"neuron deaths over {report['trace_points']} trace points (steps {report['first_step']}.."
           f"{report['last_step']}), windows of {report['window_points']} points, {report['permutations']} "
           "shuffles of death times; matched on the frequency "
           + ("over the window (mean)" if report.get("match_on") == "window-mean" else "at the window's first point")]
  fmt = lambda x: "n/a" if x is None else f"{x:.3g}"
  for name, group in [*((f"layer {l}", g) for l, g in report["layers"].items()), ("pooled", report["pooled"])]:
    c = group["counts"]
    sampled = f", {c['not_sampled']} not in the sample" if c.get("not_sampled") else ""
    lines.append(f"{name}: {c['deaths']} deaths ({c['included']} analysed, {c['excluded']} excluded{sampled}), "
                 f"{c['survivors']} survivors -> {group['reading']}")
    for f, s in group["features"].items():
      m, n = s["matched"], s["null"]
      interval = "" if m["cohens_d_ci95"] is None else f" [{fmt(m['cohens_d_ci95'][0])}, {fmt(m['cohens_d_ci95'][1])}]"
      lines.append(f"  {f}: dying {fmt(s['observed_mean'])}, matched survivors {fmt(m['survivor_mean'])}, "
                   f"d_z {fmt(m['cohens_d'])}{interval}; null {fmt(n['mean'])} [{fmt(n['q025'])}, {fmt(n['q975'])}], "
                   f"p ({n['direction']}) {fmt(n['p_value'])}")
      if "null_matched" in s:
        v = s["null_matched"]
        lines.append(f"    level-matched null (post hoc) {fmt(v['mean'])} [{fmt(v['q025'])}, {fmt(v['q975'])}], "
                     f"p ({v['direction']}) {fmt(v['p_value'])}")
  return "\n".join(lines)
