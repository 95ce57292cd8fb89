"""Per-token entropy of the model's next-token distribution, and of the target's.

Ren & Liu 2025 compare H(q) of the learned conditionals with H(p) of the true
ones. Only controlled targets know p; they put it in the batch as
`target_probs`, so the target metrics appear exactly when it is there.

The per-token values are computed where the logits exist, chunk by chunk, by
the loss (the logits of a large vocabulary are never materialised whole) when
a lens needs TOKEN_ENTROPY; this lens averages them over real tokens.
"""

from __future__ import annotations

from lensjax.ops.arrays import masked_mean
from lensjax.stats.lens import TOKEN_ENTROPY, Lens

_NAMES = {"entropy": "entropy/model_token", "target_entropy": "entropy/target_token", "kl": "entropy/kl_token"}


class TokenEntropyLens(Lens):
  """`entropy/model_token`, and with `target_probs` `entropy/target_token`, `entropy/kl_token`."""
  name = "token_entropy"
  needs = frozenset({TOKEN_ENTROPY})

  def update(self, state, view):
    mask_BxT = view.batch["mask"]
    return state, {name: masked_mean(view.tokens[key], mask_BxT) for key, name in _NAMES.items()
                   if key in view.tokens}
