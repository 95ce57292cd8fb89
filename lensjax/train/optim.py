"""Optimisers and learning-rate schedules (optax)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lensjax.config import OptimConfig

# Parameter names that weight decay leaves alone when `decay_exempt` is set.
_EXEMPT_MODULES = ("embed", "pos_embed", "norm")
_EXEMPT_LEAVES = ("bias", "scale")


def schedule_constants(cfg: OptimConfig) -> dict[str, float]:
  """The learning-rate schedule's constants, computed on the host in Python floats.

  An ensemble hands each member's to its vmapped step as float32 arrays, which hold
  exactly the float32 values these constants take in a solo run's step.
  """
  floor = cfg.lr * cfg.min_lr_ratio
  return {"lr": cfg.lr, "floor": floor, "half_span": (cfg.lr - floor) * 0.5, "span": floor - cfg.lr}


def make_schedule(cfg: OptimConfig, total_steps: int, constants: dict | None = None):
  """Warmup (linear from lr/warmup) followed by the configured decay; `constants` as `schedule_constants`."""
  warmup = max(cfg.warmup_steps, 0)
  c = schedule_constants(cfg) if constants is None else constants

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = c["lr"] * jnp.minimum((step + 1.0) / max(warmup, 1), 1.0)
    progress = jnp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
    if cfg.schedule == "constant":
      decayed = c["lr"]
    elif cfg.schedule == "cosine":
      decayed = c["floor"] + c["half_span"] * (1.0 + jnp.cos(jnp.pi * progress))
    elif cfg.schedule == "linear":
      decayed = c["lr"] + c["span"] * progress
    else:  # rsqrt
      decayed = c["lr"] * jnp.sqrt(max(warmup, 1) / jnp.maximum(step + 1.0, max(warmup, 1)))
    return jnp.where(step < warmup, warm, decayed)

  return schedule


def _is_decayed(path, _) -> bool:
  names = [getattr(k, "key", str(k)) for k in path]
  exempt = names[-1] in _EXEMPT_LEAVES or any(
      n in _EXEMPT_MODULES or n.endswith("_norm") for n in names[:-1])
  return not exempt


def decay_mask(params, cfg: OptimConfig):
  if not cfg.decay_exempt:
    return jax.tree.map(lambda _: True, params)
  return jax.tree_util.tree_map_with_path(_is_decayed, params)


def make_optimizer(cfg: OptimConfig, total_steps: int, *, decays: bool | None = None,
                   constants: dict | None = None):
  """Returns `(tx, schedule)`; clipping is applied before the optimiser.

  In an ensemble member's vmapped step, `cfg.weight_decay` and the schedule's `constants` are traced values;
  then `decays` says whether the chain has weight decay at all, which `cfg.weight_decay > 0` says otherwise.
  """
  decays = cfg.weight_decay > 0 if decays is None else decays
  schedule = make_schedule(cfg, total_steps, constants)
  mask = lambda params: decay_mask(params, cfg)
  if cfg.name == "adamw":
    core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask)
  elif cfg.name == "adam":
    core = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  elif cfg.name == "sgd":
    core = optax.sgd(schedule, momentum=cfg.momentum or None)
  else:
    core = optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay if decays else None, weight_decay_mask=mask)
  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  if cfg.name in ("adam", "sgd") and decays:
    # Coupled L2 decay for the optimisers that have no decoupled form in optax.
    parts.append(optax.add_decayed_weights(cfg.weight_decay, mask))
  return optax.chain(*parts, core), schedule
