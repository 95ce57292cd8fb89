"""`lensjax deaths`: features, matching and the shuffled-time null against NumPy on hand-built traces; planted
dynamics, outliers and chance found as such; the extract's round trip and size; a real run through the CLI."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest

from conftest import make_tiny_config, run_cli
from lensjax import cli
from lensjax.analysis import deaths
from lensjax.errors import InputError
from lensjax.train import loop

DEAD_WINDOW, LOG_EVERY = 30, 10


# --- hand-built pieces ---------------------------------------------------------


def test_window_features_against_polyfit_and_median_with_the_cases_that_have_none():
  rng = np.random.default_rng(0)
  t = np.array([0, 10, 25, 40, 70])
  pre_mean, frequency = rng.normal(size=(3, 5)), rng.uniform(size=(3, 5))
  update = rng.uniform(0.5, 2.0, size=(3, 5))
  pre_std_start = np.array([2.0, 0.0, 0.5])  # unit 1: a zero std has no standardised slope
  update[2, :-1] = 0.0  # unit 2: no earlier update, no ratio
  got = deaths.window_features(t, pre_mean, pre_std_start, frequency, update)
  for u in range(3):
    want_f1 = 1000 * np.polyfit(t, pre_mean[u], 1)[0] / pre_std_start[u] if pre_std_start[u] else np.nan
    want_f3 = update[u, -1] / np.median(update[u, :-1]) if np.median(update[u, :-1]) else np.nan
    np.testing.assert_allclose(got["pre_mean_slope"][u], want_f1, rtol=1e-10)
    np.testing.assert_allclose(got["frequency_slope"][u], 1000 * np.polyfit(t, frequency[u], 1)[0], rtol=1e-10)
    np.testing.assert_allclose(got["update_ratio"][u], want_f3, rtol=1e-12)
  assert np.isnan(got["pre_mean_slope"][1]) and np.isnan(got["update_ratio"][2])


def test_first_deaths_take_each_units_first_death_and_s_last_is_the_last_step_it_fired():
  events = [{"step": 90, "layer": 0, "unit": 1, "event": "died", "steps_since_active": 12.0},
            {"step": 40, "layer": 0, "unit": 1, "event": "died", "steps_since_active": 15.0},
            {"step": 60, "layer": 0, "unit": 1, "event": "revived", "steps_since_active": 0.0},
            {"step": 10, "layer": 1, "unit": 0, "event": "died", "steps_since_active": 11.0}]  # never fired
  found = deaths.first_deaths(events)
  assert found.layer_D.tolist() == [0, 1] and found.unit_D.tolist() == [1, 0]
  assert found.step_D.tolist() == [40, 10] and found.last_fired_D.tolist() == [25, -1]
  with pytest.raises(InputError, match="lacks step, layer, unit or steps_since_active"):
    deaths.first_deaths([{"step": 3, "layer": 0, "unit": 0, "event": "died"}])


def flat_trace(P, L, F, frequency):
  """A trace whose features are all alike, and whose frequencies at every point are `frequency` [L, F]."""
  steps = np.arange(P) * LOG_EVERY
  return steps, {"pre_mean": np.zeros((P, L, F)), "pre_std": np.ones((P, L, F)),
                 "frequency": np.broadcast_to(frequency, (P, L, F)).copy(), "w_in_update": np.ones((P, L, F)),
                 "steps_since_active": np.zeros((P, L, F))}


def test_windows_end_at_the_last_point_before_s_last_and_matches_are_the_closest_survivors():
  frequency = np.array([[0.30, 0.31, 0.10, 0.29, 0.32, 0.40, 0.25, 0.35, 0.295, 0.305]])
  steps, trace = flat_trace(8, 1, 10, frequency[:, ::-1])
  trace["frequency"][2] = frequency  # unit 0's window starts at point 2: matching looks there only
  # Unit 0 last fired at 47 (between points 40 and 50); unit 1, the closest in frequency, dies too and is no
  # survivor; unit 9 last fired at 15, with two points (0, 10) before it: excluded.
  found = deaths.Deaths(np.array([0, 0, 0]), np.array([0, 1, 9]), np.array([80, 70, 50]), np.array([47, 35, 15]))
  extract = deaths.build_extract(steps, trace, found, dead_window=DEAD_WINDOW, active_threshold=0.0,
                                 window_points=3, matches=5, null_sample=100)
  assert extract.window_end_D.tolist() == [4, 3, -1]
  # |0.3 − f|: 8 (.005), 3 (.01), 4 (.02), 6 (.05), 7 (.05, tie: the lower index first), then 5 (.10).
  assert extract.block_units_IxM[0].tolist() == [0, 8, 3, 4, 6, 7]
  assert extract.survivors_L.tolist() == [7]
  report = deaths.death_report(extract, permutations=20)
  counts = report["layers"]["0"]["counts"]
  assert (counts["deaths"], counts["included"], counts["excluded"], counts["survivors"]) == (3, 2, 1, 7)
  assert report["layers"]["0"]["reading"] == "too_few_deaths"


def test_the_null_draws_only_from_units_still_firing_at_the_window_end():
  steps, trace = flat_trace(6, 1, 3, np.full((1, 3), 0.5))
  # Unit 0 fires on every step; unit 1 last fires at 17 (dead from 21 on); unit 2 fires at 0, then at 30 only.
  trace["steps_since_active"][:, 0, 1] = [0, 0, 3, 13, 23, 33]
  trace["steps_since_active"][:, 0, 2] = [0, 10, 20, 0, 10, 20]
  found = deaths.Deaths(np.array([0]), np.array([1]), np.array([40]), np.array([17]))
  extract = deaths.build_extract(steps, trace, found, dead_window=DEAD_WINDOW, active_threshold=0.0,
                                 window_points=2, null_sample=10)
  # Still firing at t_j: fired in [t_j, t_{j+1}]. Unit 1 at 20 and 30 is not dead yet, but silent: not eligible.
  assert extract.pool_firing_UxP.astype(int).tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0],
                                                          [1, 0, 1, 1, 0, 0]]
  without = {name: values for name, values in trace.items() if name != "steps_since_active"}
  without["frequency"][:, 0, 1] = [0.5, 0.5, 0.0, 0.0, 0.0, 0.0]
  extract = deaths.build_extract(steps, without, found, dead_window=DEAD_WINDOW, active_threshold=0.0,
                                 window_points=2, null_sample=10)
  assert extract.pool_firing_UxP[1].astype(int).tolist() == [1, 1, 0, 0, 0, 0]
  assert extract.firing_rule == "frequency > 0 at t_j or t_{j+1}"


def test_a_null_pool_of_the_whole_layer_draws_each_unit_once_per_shuffle():
  steps, trace = flat_trace(8, 1, 6, np.full((1, 6), 0.5))
  trace["pre_mean"] = np.random.default_rng(5).normal(size=(8, 1, 6))
  trace["steps_since_active"][:, 0, 3:] = steps[:, None] + 1  # units 3..5 never fire
  trace["steps_since_active"][5:, 0, :3] = steps[5:, None] - 45  # units 0..2 last fire at 45
  found = deaths.Deaths(np.zeros(3, np.int64), np.arange(3), np.full(3, 80), np.full(3, 45))
  extract = deaths.build_extract(steps, trace, found, dead_window=DEAD_WINDOW, active_threshold=0.0,
                                 window_points=3, null_sample=6)
  null = deaths.death_report(extract, permutations=50)["pooled"]["features"]["pre_mean_slope"]
  # Three deaths, three units firing at their window end: every shuffle hands each of them one death.
  assert len(set(null["null"]["samples"])) == 1
  # The same units' mean, up to float16 (the windows and the pool's traces are scaled separately).
  assert null["null"]["samples"][0] == pytest.approx(null["observed_mean"], rel=1e-3)


def test_null_draws_are_eligible_and_without_replacement_unless_asked():
  rng = np.random.default_rng(1)
  eligible = rng.uniform(size=(6, 9)) < 0.7
  eligible[:, :3] = True  # enough units for every death
  picks = deaths.null_draws(eligible, 500, np.random.default_rng(2))
  for row in picks:
    assert len(set(row.tolist())) == 6 and all(eligible[d, u] for d, u in enumerate(row))
  with_replacement = deaths.null_draws(eligible, 2000, np.random.default_rng(3), replace=True)
  assert all(eligible[d, u] for row in with_replacement for d, u in enumerate(row))
  assert any(len(set(row.tolist())) < 6 for row in with_replacement)
  # Uniform among the eligible: the first death's draws spread evenly over its candidates.
  counts = np.bincount(with_replacement[:, 0], minlength=9)[eligible[0]]
  assert counts.min() > 0.7 * counts.mean()
  # Two deaths, one eligible unit: the second has none left.
  assert deaths.null_draws(np.array([[True, False], [True, False]]), 3, rng)[:, 1].tolist() == [-1, -1, -1]


def test_p_values_effect_size_and_interval_by_hand():
  null = deaths.null_comparison(2.0, [1.0, 2.0, 3.0, 4.0], "less")
  assert null["p_value"] == pytest.approx(3 / 5) and null["p_two_sided"] == pytest.approx(1.0)
  greater = deaths.null_comparison(4.0, [1.0, 2.0, 3.0, 4.0], "greater")
  assert greater["p_value"] == pytest.approx(2 / 5) and greater["p_two_sided"] == pytest.approx(2 * 2 / 5)
  assert deaths.null_comparison(0.0, [1.0, 2.0, 3.0, 4.0], "less")["p_value"] == pytest.approx(1 / 5)
  paired = deaths.paired_comparison([2.0, 4.0, 6.0, np.nan], [1.0, 2.0, 3.0, 0.0], np.random.default_rng(0))
  assert paired["pairs"] == 3 and paired["mean_difference"] == pytest.approx(2.0)
  assert paired["cohens_d"] == pytest.approx(2.0)  # D = 1, 2, 3: mean 2, sd 1
  low, high = paired["cohens_d_ci95"]
  assert low <= 2.0 <= high and high < 1e6  # no astronomic d_z from a resample of one repeated difference


# --- planted causes on synthetic traces -----------------------------------------


def synthetic_run(seed: int, kind: str, L=2, F=120, P=80, deaths_per_layer=24):
  """Stationary units, some of which die; `kind` plants what comes before a death: "dynamics" (pre_mean and
  frequency fall over the 20 points before it), "outliers" (one 20x update at the last point) or "random"."""
  rng = np.random.default_rng(seed)
  steps = np.arange(P) * LOG_EVERY
  mu, sigma = rng.normal(0.5, 0.3, (L, F)), rng.uniform(0.5, 1.5, (L, F))
  base_frequency, base_update = rng.uniform(0.1, 0.6, (L, F)), rng.uniform(0.5, 2.0, (L, F)) * 1e-3
  trace = {"pre_mean": mu + 0.05 * sigma * rng.normal(size=(P, L, F)),
           "pre_std": sigma * (1 + 0.02 * rng.normal(size=(P, L, F))),
           "frequency": np.clip(base_frequency + 0.02 * rng.normal(size=(P, L, F)), 0.005, 1.0),
           "w_in_update": base_update * np.exp(0.2 * rng.normal(size=(P, L, F))),
           "steps_since_active": np.zeros((P, L, F))}
  events = []
  for layer in range(L):
    for unit in rng.choice(F, deaths_per_layer, replace=False):
      point = int(rng.integers(30, P - 10))
      last_fired = int(steps[point] + rng.integers(0, LOG_EVERY))
      before = slice(point - 19, point + 1)
      if kind == "dynamics":
        trace["pre_mean"][before, layer, unit] -= np.linspace(0, 0.5, 20) * sigma[layer, unit]
        trace["frequency"][before, layer, unit] *= np.linspace(1.0, 0.5, 20)
      elif kind == "outliers":
        trace["w_in_update"][point, layer, unit] *= 20.0
      after = steps > last_fired
      trace["frequency"][after, layer, unit] = 0.0
      trace["w_in_update"][after, layer, unit] *= 0.1
      trace["steps_since_active"][after, layer, unit] = steps[after] - last_fired
      event_step = int(steps[np.argmax(steps - last_fired >= DEAD_WINDOW)])
      events.append({"step": event_step, "layer": layer, "unit": int(unit), "event": "died",
                     "steps_since_active": float(event_step - last_fired)})
  return steps, trace, events


def report_of(steps, trace, events, permutations=200, seed=0, **options):
  extract = deaths.build_extract(steps, trace, deaths.first_deaths(events), dead_window=DEAD_WINDOW,
                                 active_threshold=0.0, seed=seed, **options)
  return deaths.death_report(extract, permutations, seed), extract


def test_planted_dynamics_driven_deaths_give_small_p_large_effects_and_the_reading_dynamics():
  report, _ = report_of(*synthetic_run(0, "dynamics"))
  for group in (*report["layers"].values(), report["pooled"]):
    assert group["reading"] == "dynamics"
    for f in ("pre_mean_slope", "frequency_slope"):
      s = group["features"][f]
      assert s["null"]["p_value"] < 0.01 and s["matched"]["cohens_d"] < -1.0
      assert s["matched"]["cohens_d_ci95"][1] < -0.5 and s["observed_mean"] < s["null"]["q025"]
    assert abs(group["features"]["update_ratio"]["matched"]["cohens_d"]) < 0.5
  assert report["pooled"]["counts"]["included"] == 48 and report["pooled"]["counts"]["excluded"] == 0
  assert len(report["pooled"]["features"]["pre_mean_slope"]["null"]["samples"]) == 200


def test_a_layer_with_more_deaths_than_the_limit_is_analysed_on_a_seeded_uniform_sample_of_them(tmp_path):
  steps, trace, events = synthetic_run(0, "dynamics", deaths_per_layer=30)
  found = deaths.first_deaths(events)
  full, _ = report_of(steps, trace, events, max_deaths_per_layer=0)
  report, extract = report_of(steps, trace, events, max_deaths_per_layer=12)
  for layer in range(2):
    in_layer = found.layer_D == layer
    kept = extract.window_end_D[in_layer] >= 0
    assert kept.sum() == 12 and np.sum(extract.window_end_D[in_layer] == deaths.NOT_SAMPLED) == 18
    c = report["layers"][str(layer)]["counts"]
    assert (c["deaths"], c["included"], c["excluded"], c["not_sampled"]) == (30, 12, 0, 18)
    # Each null draws as many units as deaths analysed, and the sample's windows are the full run's.
    assert len(report["layers"][str(layer)]["features"]["pre_mean_slope"]["null"]["samples"]) == 200
  assert report["pooled"]["counts"]["not_sampled"] == 36 and full["pooled"]["counts"]["not_sampled"] == 0
  assert report["pooled"]["reading"] == full["pooled"]["reading"] == "dynamics"
  again = deaths.build_extract(steps, trace, found, dead_window=DEAD_WINDOW, active_threshold=0.0,
                               max_deaths_per_layer=12)
  other = deaths.build_extract(steps, trace, found, dead_window=DEAD_WINDOW, active_threshold=0.0,
                               max_deaths_per_layer=12, seed=1)
  assert np.array_equal(again.window_end_D, extract.window_end_D)
  assert not np.array_equal(other.window_end_D >= 0, extract.window_end_D >= 0)
  # The sample is part of the extract; an extract written before sampling existed reads as "every death".
  arrays = extract.to_arrays()
  assert int(arrays["max_deaths_per_layer"]) == 12
  assert json.dumps(deaths.death_report(deaths.Extract.from_arrays(arrays), 200, 0)) == json.dumps(report)
  del arrays["max_deaths_per_layer"]
  assert deaths.Extract.from_arrays(arrays).max_deaths_per_layer == 0


def test_planted_outlier_updates_give_a_large_update_ratio_and_the_reading_outliers():
  report, _ = report_of(*synthetic_run(1, "outliers"))
  s = report["pooled"]["features"]["update_ratio"]
  assert s["observed_mean"] > 10 and s["matched"]["survivor_mean"] < 2
  assert s["null"]["p_value"] < 0.01 and s["matched"]["cohens_d"] > 1.0
  assert report["pooled"]["reading"] == "outliers"


def test_deaths_at_random_times_of_stationary_units_are_not_systematically_significant():
  p_values, readings = [], []
  for seed in range(8):
    report, _ = report_of(*synthetic_run(10 + seed, "random"), seed=seed)
    p_values += [report["pooled"]["features"][f]["null"]["p_value"] for f in deaths.FEATURES]
    readings.append(report["pooled"]["reading"])
  p_values = np.array(p_values)
  # 24 p-values of a true null: about 1.2 of them below 0.05 and a mean near 1/2.
  assert np.sum(p_values < 0.05) <= 4 and 0.3 < p_values.mean() < 0.7, p_values
  assert readings.count("random") >= 5 and "dynamics" not in readings and "outliers" not in readings, readings


def test_level_matched_draws_take_the_nearest_eligible_units_in_level_uniformly():
  level = np.array([[0.10, 0.50, 0.12, 0.11, 0.90, 0.13]])
  eligible = np.array([[True, True, True, False, True, True]])
  picks = deaths.level_matched_draws(eligible, level, np.array([0.115]), 3, 3000, np.random.default_rng(0))
  # Eligible by |level − 0.115|: 2 (.005), 0 (.015), 5 (.015; the tie after 0); unit 3 is closer but not eligible.
  counts = np.bincount(picks[:, 0], minlength=6)
  assert set(np.flatnonzero(counts)) == {0, 2, 5} and counts.min(initial=3000, where=counts > 0) > 800
  none = deaths.level_matched_draws(np.zeros((1, 6), bool), level, np.array([0.1]), 3, 4, np.random.default_rng(0))
  assert none.tolist() == [[-1], [-1], [-1], [-1]]


def level_confounded_run(seed: int, L=2, F=400, P=80, deaths_per_layer=24):
  """Every unit's frequency decays as base · exp(−t / 1000 steps), so its absolute decline grows with its level;
  deaths fall at random times on random units of the lowest quarter of levels, nothing planted before them."""
  rng = np.random.default_rng(seed)
  steps = np.arange(P) * LOG_EVERY
  base_frequency = rng.uniform(0.05, 0.6, (L, F))
  trace = {"pre_mean": 0.5 + 0.05 * rng.normal(size=(P, L, F)), "pre_std": np.ones((P, L, F)),
           "frequency": np.clip(base_frequency * np.exp(-steps / 1000.0)[:, None, None]
                                + 0.01 * rng.normal(size=(P, L, F)), 0.002, 1.0),
           "w_in_update": 1e-3 * np.exp(0.2 * rng.normal(size=(P, L, F))), "steps_since_active": np.zeros((P, L, F))}
  events = []
  for layer in range(L):
    low = np.flatnonzero(base_frequency[layer] <= np.quantile(base_frequency[layer], 0.25))
    for unit in rng.choice(low, deaths_per_layer, replace=False):
      last_fired = int(steps[int(rng.integers(30, P - 10))] + rng.integers(0, LOG_EVERY))
      after = steps > last_fired
      trace["frequency"][after, layer, unit] = 0.0
      trace["steps_since_active"][after, layer, unit] = steps[after] - last_fired
      event_step = int(steps[np.argmax(steps - last_fired >= DEAD_WINDOW)])
      events.append({"step": event_step, "layer": layer, "unit": int(unit), "event": "died",
                     "steps_since_active": float(event_step - last_fired)})
  return steps, trace, events


def test_the_level_matched_null_removes_the_firing_level_confound_of_the_frequency_slope():
  original, matched = [], []
  for seed in range(8):
    report, _ = report_of(*level_confounded_run(20 + seed), seed=seed)
    s = report["pooled"]["features"]["frequency_slope"]
    original.append(s["null"]["p_value"])
    matched.append(s["null_matched"]["p_value"])
    assert set(s["null_matched"]) == set(s["null"]) and len(s["null_matched"]["samples"]) == 200
    for group in report["layers"].values():
      assert group["features"]["frequency_slope"]["null_matched"]["p_value"] is not None
  original, matched = np.array(original), np.array(matched)
  # Dying units fire low, so they decline less than random still-firing units: the uniform null says p ≈ 1.
  assert np.all(original > 0.95), original
  # Against units of their own level they are what they are, chance: p neither small nor near 1, as a rule.
  assert np.sum((matched > 0.05) & (matched < 0.95)) >= 6 and 0.2 < matched.mean() < 0.8, matched


def test_planted_dynamics_give_small_p_under_the_level_matched_null_too():
  report, _ = report_of(*synthetic_run(0, "dynamics"))
  for group in (*report["layers"].values(), report["pooled"]):
    for f in ("pre_mean_slope", "frequency_slope"):
      s = group["features"][f]
      assert s["null_matched"]["p_value"] < 0.01 and s["observed_mean"] < s["null_matched"]["q025"]
  assert report["level_candidates"] == deaths.DEFAULT_LEVEL_CANDIDATES
  assert "level-matched null (post hoc)" in deaths.summary_text(report)


def regression_to_the_mean_run(seed: int, L=2, F=400, P=80, deaths_per_layer=24):
  """Every unit's frequency is a stationary AR(1) process (φ 0.7, sd 0.05) about its own level (0.15..0.6), no
  trend anywhere; pre_mean follows it. Each death goes to the unit lowest at one random point, and its window
  ends 30 points later (the AR memory long gone): so dying units are low-level units, and survivors matched on
  one point to them are units caught in a low excursion there, which rise afterwards."""
  rng = np.random.default_rng(seed)
  steps = np.arange(P) * LOG_EVERY
  level = rng.uniform(0.15, 0.6, (L, F))
  noise = np.empty((P, L, F))
  noise[0] = 0.05 * rng.normal(size=(L, F))
  for point in range(1, P):
    noise[point] = 0.7 * noise[point - 1] + 0.05 * np.sqrt(1 - 0.7 ** 2) * rng.normal(size=(L, F))
  frequency = level + noise
  trace = {"pre_mean": 2.0 * frequency + 0.01 * rng.normal(size=(P, L, F)), "pre_std": np.ones((P, L, F)),
           "frequency": frequency.copy(), "w_in_update": 1e-3 * np.exp(0.2 * rng.normal(size=(P, L, F))),
           "steps_since_active": np.zeros((P, L, F))}
  events = []
  for layer in range(L):
    chosen = set()
    for _ in range(deaths_per_layer):
      low_at = int(rng.integers(5, 40))
      unit = int(next(u for u in np.argsort(frequency[low_at, layer]) if u not in chosen))
      chosen.add(unit)
      last_fired = int(steps[low_at + 30] + rng.integers(0, LOG_EVERY))
      after = steps > last_fired
      trace["frequency"][after, layer, unit] = 0.0
      trace["steps_since_active"][after, layer, unit] = steps[after] - last_fired
      event_step = int(steps[np.argmax(steps - last_fired >= DEAD_WINDOW)])
      events.append({"step": event_step, "layer": layer, "unit": unit, "event": "died",
                     "steps_since_active": float(event_step - last_fired)})
  return steps, trace, events


def test_window_mean_matching_removes_the_regression_to_the_mean_of_single_point_matching():
  d_z = {m: [] for m in deaths.MATCH_ON}
  p = {m: [] for m in deaths.MATCH_ON}
  covers_zero = []
  for seed in range(8):
    steps, trace, events = regression_to_the_mean_run(40 + seed)
    extract = deaths.build_extract(steps, trace, deaths.first_deaths(events), dead_window=DEAD_WINDOW,
                                   active_threshold=0.0, seed=seed)
    for match_on in deaths.MATCH_ON:
      report = deaths.death_report(extract, 200, seed, match_on=match_on)
      assert report["match_on"] == match_on and report["pooled"]["counts"]["excluded_by_matching"] == 0
      for f in ("pre_mean_slope", "frequency_slope"):
        s = report["pooled"]["features"][f]
        d_z[match_on].append(s["matched"]["cohens_d"])
        p[match_on].append(s["null_matched"]["p_value"])
        if match_on == "window-mean":
          covers_zero.append(s["matched"]["cohens_d_ci95"][0] < 0 < s["matched"]["cohens_d_ci95"][1])
  d_z, p = {m: np.array(v) for m, v in d_z.items()}, {m: np.array(v) for m, v in p.items()}
  # One-point matching: a spurious decline, in the matched survivors and in the level-matched null alike.
  assert np.all(d_z["start"] < -0.3) and d_z["start"].mean() < -0.4, d_z["start"]
  assert np.sum(p["start"] <= 0.05) >= 14, p["start"]
  # Matching on the window's mean: nothing, as a rule.
  assert abs(d_z["window-mean"].mean()) < 0.15 and sum(covers_zero) >= 14, d_z["window-mean"]
  assert np.sum(p["window-mean"] < 0.05) <= 2 and 0.25 < p["window-mean"].mean() < 0.75, p["window-mean"]


def test_planted_dynamics_are_found_under_window_mean_matching_too():
  report, extract = report_of(*synthetic_run(0, "dynamics"))
  assert report["match_on"] == "start"
  assert deaths.death_report(extract, 200, 0, match_on="start") == report  # the default
  report = deaths.death_report(extract, 200, 0, match_on="window-mean")
  assert report["match_on"] == "window-mean" and "over the window (mean)" in deaths.summary_text(report)
  for group in (*report["layers"].values(), report["pooled"]):
    assert group["reading"] == "dynamics"
    for f in ("pre_mean_slope", "frequency_slope"):
      s = group["features"][f]
      assert s["matched"]["cohens_d"] < -1.0 and s["matched"]["cohens_d_ci95"][1] < -0.5
      assert s["null_matched"]["p_value"] < 0.01
  with pytest.raises(InputError, match="match_on"):
    deaths.death_report(extract, 10, 0, match_on="before")


# --- the extract -----------------------------------------------------------------


def test_the_extract_round_trips_through_a_file_to_the_same_report(tmp_path):
  steps, trace, events = synthetic_run(2, "dynamics")
  for null_sample in (1024, 50):  # the whole layer (no replacement) and a sample of it
    report, extract = report_of(steps, trace, events, null_sample=null_sample)
    path = str(tmp_path / "extract.npz")
    np.savez_compressed(path, **extract.to_arrays())
    with np.load(path, allow_pickle=False) as arrays:
      again = deaths.Extract.from_arrays({name: arrays[name] for name in arrays.files})
    assert json.dumps(deaths.death_report(again, 200, 0)) == json.dumps(report)
  assert report["layers"]["0"]["counts"]["null_pool"] == 50


def test_float16_extract_keeps_the_features_of_the_float32_trace():
  steps, trace, events = synthetic_run(3, "random")
  _, extract = report_of(steps, trace, events)
  rows = np.flatnonzero(extract.window_end_D >= 0)
  K = extract.window_points
  block = {name: deaths.decode(*extract.block[name]) for name in deaths.WINDOW_FIELDS}
  for row, death in enumerate(rows[:10]):
    layer, end = extract.deaths.layer_D[death], extract.window_end_D[death]
    points = np.arange(end - K + 1, end + 1)
    units = extract.block_units_IxM[row]
    exact = deaths.window_features(steps[points], trace["pre_mean"][points][:, layer, units].T,
                                   trace["pre_std"][points[0], layer, units], trace["frequency"][points][:, layer, units].T,
                                   trace["w_in_update"][points][:, layer, units].T)
    kept = deaths.window_features(steps[points], block["pre_mean"][row], extract.block_pre_std_start_IxM[row],
                                  block["frequency"][row], block["w_in_update"][row])
    for f in deaths.FEATURES:
      scale = np.max(np.abs(exact[f]))
      np.testing.assert_allclose(kept[f], exact[f], atol=0.02 * scale, err_msg=f)


def test_an_extract_of_six_layers_of_8192_units_and_110_points_stays_under_5_mb():
  P, L, F, per_layer = 110, 6, 8192, 300
  rng = np.random.default_rng(4)
  shape = (P, L, F)
  trace = {"pre_mean": (np.cumsum(rng.normal(0, 0.02, shape), 0) + rng.normal(0, 0.5, (1, L, F))).astype(np.float32),
           "pre_std": (1 + np.abs(np.cumsum(rng.normal(0, 0.01, shape), 0))).astype(np.float32),
           "frequency": np.clip(rng.uniform(0, 0.6, (1, L, F)) + rng.normal(0, 0.02, shape), 0, 1).astype(np.float32),
           "w_in_update": (np.exp(rng.normal(-6, 0.3, shape)) * np.linspace(1, 0.1, P)[:, None, None]).astype(np.float32),
           "steps_since_active": np.zeros(shape, np.float32)}
  last_fired = rng.integers(1500, 10000, L * per_layer)
  found = deaths.Deaths(np.repeat(np.arange(L), per_layer),
                        np.concatenate([rng.choice(F, per_layer, replace=False) for _ in range(L)]),
                        last_fired + 200, last_fired)
  extract = deaths.build_extract(np.arange(P) * 100, trace, found, dead_window=100, active_threshold=0.0)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **extract.to_arrays())
  assert buffer.tell() < 5e6, buffer.tell()


# --- a real run through the CLI ----------------------------------------------------


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("traced"))
  config = make_tiny_config(**{"stats.unit_trace": True, "train.steps": 40, "logging.log_every": 1,
                               "optim.lr": 3e-2, "stats.dead_window": 4})
  loop.train(config, workdir)
  return workdir


def test_a_traced_run_has_one_trace_file_per_logging_step(traced_run):
  names = sorted(os.listdir(os.path.join(traced_run, "unit_trace")))
  assert names == [f"step_{s:08d}.npz" for s in range(40)]


def test_lensjax_deaths_on_a_real_run_and_from_its_extract_gives_the_same_json(traced_run, tmp_path):
  out, extract = str(tmp_path / "deaths.json"), str(tmp_path / "extract.npz")
  result = run_cli("deaths", "--workdir", traced_run, "--window-points", "4", "--permutations", "200",
                   "--json", out, "--extract", extract)
  assert result.returncode == 0, result.stderr
  assert "pooled:" in result.stdout
  with open(out) as f:
    report = json.load(f)
  assert report["pooled"]["counts"]["included"] > 0 and set(report["layers"]) == {"0", "1"}
  assert report["units_per_layer"] == 64 and report["layers"]["0"]["counts"]["null_pool"] == 64  # every unit
  again = run_cli("deaths", "--from-extract", extract, "--permutations", "200", "--json")
  assert again.returncode == 0, again.stderr
  from_extract = json.loads(again.stdout)
  assert from_extract.pop("source") == extract and report.pop("source") == traced_run
  assert from_extract == report
  by_mean = run_cli("deaths", "--from-extract", extract, "--permutations", "50", "--json", "--match-on", "window-mean")
  assert by_mean.returncode == 0, by_mean.stderr
  assert json.loads(by_mean.stdout)["match_on"] == "window-mean" and report["match_on"] == "start"


def test_lensjax_deaths_refuses_runs_it_cannot_read_with_exit_2_and_keeps_the_files(traced_run, tmp_path):
  untraced = str(tmp_path / "untraced")
  shutil.copytree(traced_run, untraced, ignore=shutil.ignore_patterns("unit_trace", "checkpoints", "tb"))
  previous = os.path.join(untraced, "deaths.json")
  with open(previous, "w") as f:
    f.write("an earlier report")
  result = run_cli("deaths", "--workdir", untraced, "--json", previous)
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0 and "--config.stats.unit_trace=true" in result.stderr
  with open(previous) as f:
    assert f.read() == "an earlier report"

  silent = str(tmp_path / "silent")
  shutil.copytree(traced_run, silent, ignore=shutil.ignore_patterns("neuron_events.jsonl", "checkpoints", "tb"))
  result = run_cli("deaths", "--workdir", silent)
  assert result.returncode == 2 and "no neuron events" in result.stderr
  assert sorted(os.listdir(os.path.join(silent, "unit_trace"))) == sorted(
      os.listdir(os.path.join(traced_run, "unit_trace")))

  not_an_extract = str(tmp_path / "other.npz")
  np.savez(not_an_extract, x=np.zeros(3))
  result = run_cli("deaths", "--from-extract", not_an_extract)
  assert result.returncode == 2 and "is not an extract of lensjax deaths" in result.stderr


def test_lensjax_deaths_refuses_bad_arguments_and_ensemble_roots(traced_run, tmp_path, capsys):
  ensemble = tmp_path / "ensemble"
  ensemble.mkdir()
  (ensemble / "ensemble.json").write_text("{}")
  extract = str(tmp_path / "extract.npz")
  assert cli.main(["deaths", "--workdir", traced_run, "--permutations", "20", "--extract", extract]) == 0
  capsys.readouterr()
  cases = [(["--from-extract", extract, "--max-deaths-per-layer", "5"],
            f"{extract} was extracted with --max-deaths-per-layer 2000, not 5"),
           (["--workdir", str(ensemble)], "pass one member's run directory"),
           (["--workdir", traced_run, "--window-points", "2"], "--window-points is 2"),
           (["--workdir", traced_run, "--max-deaths-per-layer", "-1"], "--max-deaths-per-layer is -1"),
           (["--workdir", traced_run, "--extract", str(tmp_path / "missing" / "x.npz")], "does not exist"),
           ([], "reads one run or one extract"),
           (["--workdir", traced_run, "--no-such-option"], "takes no --no-such-option")]
  for arguments, message in cases:
    assert cli.main(["deaths", *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
