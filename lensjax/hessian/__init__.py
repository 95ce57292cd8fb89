"""Second-order information of the training loss, from Hessian-vector products.

Everything works on parameter pytrees as they are (no flattening) and is
traceable, so that it runs inside `jax.jit` next to a train state of any
layout or sharding. Four modules, each importing only the ones before it:

  precision   float32, tf32 (default), bf16: the names and what each means (free of
              JAX, so that the config reads them)
  operators   the plain loss at one of them (docs/metrics.md) and v ↦ Hv, its micro-batches,
              Adam's preconditioned operator P^{-1/2} H P^{-1/2}, the block of
              H on a parameter mask, the stability threshold of a step size
  spectrum    power iteration, Lanczos with stochastic Lanczos quadrature,
              Hutchinson's trace
  metrics     the `hessian/*` bundle of the train loop (every
              `stats.hessian_every` steps) and the Taylor terms of one update

The train loop, the spike replay and `lensjax hessian` all measure through
`metrics.hessian_core`, so their numbers agree by construction.
"""
