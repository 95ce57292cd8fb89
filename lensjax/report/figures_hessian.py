"""The Hessian's spectral density from stochastic Lanczos quadrature (`lensjax hessian`)."""

from __future__ import annotations

import math
import os

import numpy as np
from matplotlib.figure import Figure

from lensjax.report.plotting import save

DENSITY_DPI = 110


def spectral_density_figure(nodes, weights, path: str, title: str) -> str:
  """The SLQ density, each Ritz value broadened by a Gaussian, on a log density axis; creates the folder of `path`."""
  nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
  span = max(float(np.max(np.abs(nodes))), 1e-12)
  grid = np.linspace(nodes.min() - 0.05 * span, nodes.max() + 0.05 * span, 2000)
  width = 0.01 * span
  density = (weights[None, :] * np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / width) ** 2)).sum(1)
  density /= width * math.sqrt(2 * math.pi)
  figure = Figure(figsize=(7, 3.5))
  axes = figure.subplots()
  axes.semilogy(grid, np.maximum(density, 1e-12), color="tab:blue")
  axes.set_ylim(bottom=max(1e-8, float(density.max()) * 1e-8))
  axes.set_xlabel("eigenvalue of H")
  axes.set_ylabel("density (SLQ)")
  axes.set_title(title)
  figure.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  return save(figure, path, dpi=DENSITY_DPI)
