"""Per-token entropy of the model's next-token distribution, and of the target's.

Ren & Liu 2025 compare H(q) of the learned conditionals with H(p) of the true
ones. Only controlled targets know p; they put it in the batch as
`target_probs`, so the target metrics appear exactly when it is there.

The per-token values are computed where the logits exist, chunk by chunk, in
`lensjax.train.loss.token_statistics` (the logits of a large vocabulary are
never materialised whole); this lens averages them over real tokens.
"""

from __future__ import annotations

from lensjax.train.loss import masked_token_mean

_NAMES = {"entropy": "entropy/model_token", "target_entropy": "entropy/target_token", "kl": "entropy/kl_token"}


def token_entropy_lens(view) -> dict:
  """`entropy/model_token`, and with `target_probs` `entropy/target_token`, `entropy/kl_token`."""
  mask_BxT = view.batch["mask"]
  return {name: masked_token_mean(view.tokens[key], mask_BxT) for key, name in _NAMES.items() if key in view.tokens}


def eval_token_entropy_lens(view) -> dict:
  return {"eval/" + name: value for name, value in token_entropy_lens(view).items()}
