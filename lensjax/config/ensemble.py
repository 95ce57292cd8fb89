"""An ensemble's members as configs of their own.

`train.members = N` trains N runs as one program. Member i is the run whose
config `member_configs(config)[i]` gives: seeds `train.seed + i` (with
`init` in `train.vary`), data order `order_seed + i` (with `data`) and target
`data.seed + i` (with `target`), its own learning rate and weight decay when
`optim.lr_per_member` / `optim.weight_decay_per_member` list them, and
`train.members = 1`, so that it can also be continued alone.
"""

from __future__ import annotations

import dataclasses
import json

from lensjax.config.sections import Config, to_dict
from lensjax.errors import InputError

VARY = ("init", "data", "target")
# What may differ between the members of one ensemble.
SEED_KEYS = ("train.seed", "data.seed", "data.order_seed")
HYPER_KEYS = ("optim.lr", "optim.weight_decay")


def vary_parts(vary: str) -> tuple[str, ...]:
  return tuple(part.strip() for part in vary.split("+") if part.strip())


def member_configs(config: Config) -> list[Config]:
  """One solo config per member (a run with `train.members = 1` is its own only member)."""
  t, d, o = config.train, config.data, config.optim
  if t.members == 1 and not o.lr_per_member and not o.weight_decay_per_member:
    return [config]
  vary = vary_parts(t.vary)
  base_order = d.seed if d.order_seed < 0 else d.order_seed
  members = []
  for i in range(t.members):
    shift = lambda part: i if part in vary else 0
    members.append(dataclasses.replace(
        config,
        # Alone, a member that met a non-finite step stops where it would have frozen: nan_policy halt.
        train=dataclasses.replace(t, members=1, seed=t.seed + shift("init"),
                                  nan_policy="halt" if t.nan_policy == "freeze" else t.nan_policy),
        data=dataclasses.replace(d, seed=d.seed + shift("target"), order_seed=base_order + shift("data")),
        optim=dataclasses.replace(o, lr=o.lr_per_member[i] if o.lr_per_member else o.lr,
                                  weight_decay=o.weight_decay_per_member[i] if o.weight_decay_per_member
                                  else o.weight_decay,
                                  lr_per_member=(), weight_decay_per_member=())))
  return members


def setting_key(config: Config, free: tuple[str, ...] = SEED_KEYS + HYPER_KEYS) -> str:
  """`config` as text without the `free` keys (and the ensemble's own): equal for members of one ensemble."""
  values = to_dict(config)
  for key in free + ("train.members", "optim.lr_per_member", "optim.weight_decay_per_member"):
    section, name = key.split(".")
    values[section].pop(name, None)
  return json.dumps(values, sort_keys=True)


def ensemble_of(members: list[Config]) -> Config:
  """The config of an ensemble of these solo configs, which may differ only in seeds, learning rate and weight
  decay; train it with `members=` (its own `member_configs` would number the seeds from the first member's)."""
  if len({setting_key(m) for m in members}) != 1:
    raise InputError("the members of an ensemble may differ only in train.seed, data.seed, data.order_seed, "
                     "optim.lr and optim.weight_decay; train the others as separate runs.")
  first = members[0]
  per_member = lambda values: tuple(values) if len(set(values)) > 1 else ()
  return dataclasses.replace(
      first, train=dataclasses.replace(first.train, members=len(members)),
      optim=dataclasses.replace(first.optim, lr_per_member=per_member(m.optim.lr for m in members),
                                weight_decay_per_member=per_member(m.optim.weight_decay for m in members)))
