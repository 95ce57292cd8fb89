"""One-line descriptions of the TensorBoard tags, from docs/metrics.md's tables.

`DESCRIPTIONS` is the table `descriptions_from_markdown` makes of docs/metrics.md; a test compares the two, so
that they cannot drift (the package ships without its docs, so the table lives here). To refresh it:
`python -m lensjax.io.metric_descriptions docs/metrics.md`.
"""

from __future__ import annotations

import re
import sys

MAX_CHARS = 200
# What follows a family's name in a tag: a layer/head, a summary over layers, a heat map.
_TAG_SUFFIX = re.compile(r"(/layer_\d+(/head_\d+)?|/(mean|min|max|first_layer|last_layer|heatmap))+$")
_PREFIXES = ("eval/", "probe_train/", "probe/")
_NAME_IN_CELL = re.compile(r"`([a-z_]+/[a-z0-9_/{}]+)`")


def descriptions_from_markdown(text: str) -> dict[str, str]:
  """{family name: the first sentence of its row} for every `name/...` of a two-column table in `text`.

  A family name drops the `/layer_{l}` and `/head_{h}` parts of the documented name.
  """
  table = {}
  for line in text.splitlines():
    cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
    if len(cells) != 2 or cells[0] in ("name", "---") or "/" not in cells[0]:
      continue
    meaning = cells[1].replace("\\|", "|")
    sentence = one_line(meaning.split(". ")[0])
    for name in _NAME_IN_CELL.findall(cells[0]):
      family = re.sub(r"/(layer|head)_\{[lh]\}", "", name)
      table.setdefault(family, sentence)
  return table


def one_line(text: str) -> str:
  """`text` cut at a word to at most MAX_CHARS characters."""
  if len(text) <= MAX_CHARS:
    return text
  return text[:MAX_CHARS - 1].rsplit(" ", 1)[0] + "…"


def family_of(tag: str) -> str:
  """The docs/metrics.md family a tag belongs to: `eval/ffn/dead/layer_3` and `ffn/dead/mean` -> `ffn/dead`."""
  return _TAG_SUFFIX.sub("", tag)


def description_of(tag: str) -> str:
  """The tag's description (a summary scalar says what it summarises); "" when docs/metrics.md has none."""
  family = family_of(tag)
  found = DESCRIPTIONS.get(re.sub(r"_p(10|50|90|99)$", "_p10", family))  # one row documents the four quantiles
  where = ""
  if found is None:
    for prefix in _PREFIXES:
      bare = re.sub(r"_p(10|50|90|99)$", "_p10", family[len(prefix):])
      if family.startswith(prefix) and bare in DESCRIPTIONS:
        found, where = DESCRIPTIONS[bare], f" ({prefix.rstrip('/')} batches)"
        break
  if found is None:
    return ""
  summary = tag[len(family):].lstrip("/")
  if summary in ("mean", "min", "max"):
    found = f"{summary} over layers (and heads) of: {found}"
  elif summary in ("first_layer", "last_layer"):
    found = f"{summary.replace('_', ' ')} (mean over heads where per head) of: {found}"
  return markdown_escaped(found + where)


def markdown_escaped(text: str) -> str:
  """`text` with the characters Markdown would read as markup backslash-escaped (`6*N*` stays `6*N*`)."""
  return re.sub(r"([\\`*_{}\[\]<>|#])", r"\\\1", text)


DESCRIPTIONS: dict[str, str] = {  # generated from docs/metrics.md (see the module docstring)
    "train/loss": "mean next-token cross-entropy over real tokens",
    "train/lr": "learning rate used at this step",
    "train/grad_norm": "global L2 norm of the gradient (before clipping)",
    "perf/step_time_s": "measured step time; MFU against the device's dense bf16 peak, FLOPs per token = 6N + 12·L·T·D (N = non-embedding-position parameters); the formula and peak are printed at start-up",
    "perf/tokens_per_s": "measured step time; MFU against the device's dense bf16 peak, FLOPs per token = 6N + 12·L·T·D (N = non-embedding-position parameters); the formula and peak are printed at start-up",
    "perf/tflops_per_device": "measured step time; MFU against the device's dense bf16 peak, FLOPs per token = 6N + 12·L·T·D (N = non-embedding-position parameters); the formula and peak are printed at start-up",
    "perf/mfu": "measured step time; MFU against the device's dense bf16 peak, FLOPs per token = 6N + 12·L·T·D (N = non-embedding-position parameters); the formula and peak are printed at start-up",
    "ffn/active_token": "mean over real tokens of (1/F)·Σ_f 1[A[b,t,f] > tau]",
    "ffn/active_seq": "mean over sequences of (1/F)·Σ_f max_t M·1[A > tau] (units active on at least one token of the sequence)",
    "ffn/active_batch": "(1/F)·Σ_f max_{b,t} M·1[A > tau] (units active on at least one token of the batch)",
    "ffn/dead": "fraction of units that have not been active on any token for the last `dead_window` steps (tracked on device in the train state: per-unit last-active step, shape [L, F])",
    "ffn/active_overlap_heldout": "Jaccard overlap |S_train ∩ S_heldout| / |S_train ∪ S_heldout| of the sets of units active on at least one token of a training batch and of a held-out batch of the same size",
    "ffn/died": "number of units that crossed into / out of the dead set at this step",
    "ffn/revived": "number of units that crossed into / out of the dead set at this step",
    "ffn/active_token_p10": "quantile q = 0.1, 0.5, 0.9, 0.99 of a[b,t] over the real tokens (M > 0); NaN without a real token",
    "ffn/unit_frequency_p10": "quantile of freq_f over the layer's F units; NaN without a real token",
    "persist/batch_jaccard": "J = |S_tr ∩ S_ho| / |S_tr ∪ S_ho|, S_tr and S_ho the units active on at least one real token of the training and of the held-out probe (1 when both are empty)",
    "persist/batch_jaccard_null": "E[J] for independent, uniformly random subsets of sizes a = |S_tr| and b = |S_ho| of the F units, exactly: Σ_i P(I = i)·i / (a + b − i) over max(0, a + b − F) ≤ i ≤ min(a, b), P(I = i) = C(a, i)·C(F…",
    "persist/batch_lift": "(J − null) / (1 − null): 0 at chance, 1 for identical sets; NaN when the null is 1 (both sets empty, or both all F units)",
    "persist/seq_jaccard": "mean over pairs (training-probe sequence i, held-out-probe sequence i), among the pairs whose two sequences both hold a real token, of the Jaccard of the two sequences' active-unit sets; NaN without…",
    "persist/seq_jaccard_null": "mean over the same pairs of each pair's exact null for its two set sizes",
    "persist/seq_lift": "(seq_jaccard − seq_jaccard_null) / (1 − seq_jaccard_null); NaN when that null is 1",
    "persist/frequency_corr": "Pearson correlation over the F units of freq_f on the training probe and on the held-out probe; NaN when either is constant (an all-dead layer)",
    "attn/bypass": "mean over real tokens of ‖attn_out[b,t]‖ / ‖h[b,t]‖, where h is the residual stream entering the block and attn_out what the attention sublayer adds to it",
    "attn/entropy": "mean over real query tokens of the attention distribution's entropy divided by log(number of visible keys) (query 0, with one key, is excluded)",
    "attn/max_logit": "largest pre-softmax attention logit q·k/√d_h",
    "attn/sink": "mean attention mass on key position 0",
    "entropy/model_token": "mean over real tokens of H(q(·|x<t)) = logsumexp(z) − Σ softmax(z)·z",
    "entropy/target_token": "same for the target's true next-token distribution p(·|x<t), where the data source knows it (controlled targets)",
    "entropy/kl_token": "mean over real tokens of KL(p(·|x<t) ‖ q(·|x<t)), where p is known",
    "eval/entropy_model_seq": "entropy of the whole-sequence distribution, H(X_1..T) = −Σ_x P(x) log P(x): exact by enumeration when V^T is small enough, else Monte Carlo by ancestral sampling at temperature 1 with the…",
    "eval/entropy_target_seq": "entropy of the whole-sequence distribution, H(X_1..T) = −Σ_x P(x) log P(x): exact by enumeration when V^T is small enough, else Monte Carlo by ancestral sampling at temperature 1 with the…",
    "eval/kl_seq": "KL(P_target ‖ Q_model) over whole sequences, exact or Monte Carlo from target samples",
    "eval/cross_entropy_seq": "H(P, Q) = H(P) + KL(P ‖ Q) over whole sequences (`_stderr` as above)",
    "eval/entropy_trainset_seq": "entropy of the empirical law of a finite training set of N sequences (at most log N): the confound when a model is trained on a finite set",
    "norm/params": "‖θ_t‖₂ over all trainable non-scalar parameters; `norm/params/layer_{l}` per block; `norm/params/embed` for the embeddings (token, position, unembedding); `norm/params/non_embedding` = √(‖θ_t‖² −…",
    "norm/update": "‖δ_t‖₂ with δ_t = θ_{t+1} − θ_t",
    "norm/cos_step": "cos(θ_t, θ_{t+1})",
    "norm/alignment": "cos(δ_t, θ_t)",
    "eval/saturation": "mean over real tokens of cos(h_l(x; θ), h_l(x; c·θ)) with c = 1000, every parameter scaled, h_l the residual stream after block l; float64 forward on the explicit-softmax path, causal mask by…",
    "eval/saturated_head": "in the saturated network (c = 1000), mean over real queries of the number of keys with attention weight > 1e-5 (1 = argmax head, about half the visible keys = averaging head); `lensjax saturation`…",
    "adam/g2_over_v": "mean(g²) / mean(v̂) over the block's parameters (≫ 1 means the preconditioner is stale: the setting for Adam-driven spikes)",
    "adam/update_grad_cos": "cos(update, −gradient) over all parameters",
    "adam/update_saturated": "fraction of coordinates with |m̂/(√v̂+ε)| > 0.9",
    "hessian/lambda_max": "top (largest algebraic) eigenvalue of the loss Hessian H, the one compared with `hessian/stability_threshold` for SGD: power iteration on H − σI, σ = min(`hessian/lambda_maxabs`, 0), on…",
    "hessian/lambda_maxabs": "eigenvalue of H of largest magnitude, sign kept (plain power iteration): negative when a saddle direction dominates",
    "hessian/lambda_max_precond": "top eigenvalue of P^{-1/2} H P^{-1/2}, P = diag(√v̂ + ε) from Adam's state (the symmetric form), compared with the Adam threshold; same shifted iteration",
    "hessian/lambda_maxabs_precond": "its eigenvalue of largest magnitude, sign kept (P^{-1/2} H P^{-1/2} is congruent to H: as many negative eigenvalues)",
    "hessian/stability_threshold": "2/η for SGD; (2 + 2β₁)/((1 − β₁)·η) for Adam",
    "hessian/trace": "Hutchinson estimate of tr(H) with Rademacher probes; `_stderr` suffix",
    "hessian/update_curvature": "δᵀHδ / ‖δ‖² along the step actually taken",
    "spike/dloss_first_order": "g·δ and ½·δᵀHδ for a step: the first- and second-order parts of the predicted loss change, next to `spike/dloss_actual`",
    "spike/dloss_second_order": "g·δ and ½·δᵀHδ for a step: the first- and second-order parts of the predicted loss change, next to `spike/dloss_actual`",
    "spike/count": "steps detected as spikes since step 0, and the latest of them (−1: none); logged on logging steps, so a spike between two of them is never lost",
    "spike/last_step": "steps detected as spikes since step 0, and the latest of them (−1: none); logged on logging steps, so a spike between two of them is never lost",
}


if __name__ == "__main__":
  import json
  for family, text in descriptions_from_markdown(open(sys.argv[1], encoding="utf-8").read()).items():
    print(f"    {json.dumps(family)}: {json.dumps(text, ensure_ascii=False)},")
