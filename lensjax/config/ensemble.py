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

from lensjax.config.sections import Config

VARY = ("init", "data", "target")


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
