"""The host loop: build, restore, step, log, evaluate, checkpoint.

Everything on the device stays on the device: step t+1 is dispatched before
step t's metrics are fetched, and only logging steps fetch anything.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lensjax import config as config_lib
from lensjax import parallel, perf
from lensjax.data.factory import make_source
from lensjax.data.prepared import with_prepared_vocab
from lensjax.errors import TrainingHalted
from lensjax.io.checkpoints import Checkpoints, abstract_like, meta_of
from lensjax.io.metric_descriptions import markdown_escaped
from lensjax.io.run_logger import EnsembleLogger, RunLogger
from lensjax.model import has_ffn
from lensjax.stats import lenses as lens_lib
from lensjax.stats.lens import Lens, stateful_names
from lensjax.stats.persistence import probe_persistence
from lensjax.stats.sparsity import heldout_overlap
from lensjax.train import optim, resume
from lensjax.train.guards import (Preemption, SkipStreak, first_bad_steps, halt_message, log, prepare_run_dirs,
                                  skipped_steps)
from lensjax.train.ensemble import EnsembleCheckpoints, ensemble_step_fn, member_dirs, member_of, write_ensemble_file
from lensjax.train.state import MIGRATE, create_state
from lensjax.train.step import eval_step, jit_train_step, model_for, probe_step


def platform() -> str:
  return jax.devices()[0].platform


def prepare(config: config_lib.Config) -> config_lib.Config:
  """Validates and resolves a config for this machine (the vocabulary of a prepared text directory from its
  meta.json); raises InputError."""
  config = with_prepared_vocab(config)
  config_lib.validate(config, jax.device_count(), jax.process_count(), platform())
  return config_lib.resolve(config, platform())


@dataclasses.dataclass
class Run:
  """The compiled pieces of one run (or one ensemble); built once, used by train and the analyses."""
  config: config_lib.Config
  members: list  # the members' solo configs ([config] for a solo run)
  sources: list  # one data source per member
  mesh: jax.sharding.Mesh
  state: object
  plain_step: object
  logging_step: object
  eval_fn: object
  overlap_fn: object | None  # None without FFN
  probe_fn: object  # (params, training probe, held-out probe) -> probe_train/, probe/ and persist/ metrics
  schedule: object
  lenses: tuple[Lens, ...]  # train, eval and probe lenses: their host halves write the fetched records

  @property
  def source(self):
    return self.sources[0]

  @property
  def ensemble(self) -> bool:
    """Whether state, batches and metrics carry a leading member axis."""
    return self.config.train.members > 1


# An analysis run after a step, every `every` steps: `make(run)` builds `fn(state, batch, step) -> metrics`.
@dataclasses.dataclass(frozen=True)
class Periodic:
  every: int
  make: Callable[[Run], Callable]


def build(config: config_lib.Config, mesh=None, members: Sequence[config_lib.Config] | None = None,
          sources: Sequence | None = None) -> Run:
  """Builds sources (unless given, one per member), model, optimiser, initial state and compiled steps;
  `members`: an ensemble's solo configs (default `member_configs(config)`)."""
  mesh = mesh or parallel.make_mesh(fsdp=config.parallel.fsdp)
  members = list(members or config_lib.member_configs(config))
  ensemble = config.train.members > 1
  sources = list(sources) if sources is not None else [make_source(member) for member in members]
  train_lenses, eval_lenses = lens_lib.train_lenses(config), lens_lib.eval_lenses(config)
  probe_lenses, probe_train_lenses = lens_lib.probe_lenses(config), lens_lib.probe_lenses(config, "probe_train/")
  every_step = tuple(lens for lens in train_lenses if lens.every_step)
  model_plain, model_logging = model_for(config.model, every_step), model_for(config.model, train_lenses)
  tx, schedule = run_optimizer(config, members)
  replicated = parallel.replicated(mesh)
  batch_sharding = parallel.member_batch_sharding(mesh) if ensemble else parallel.batch_sharding(mesh)
  init = state_init(config, members, model_plain, tx, train_lenses)
  state_sharding = parallel.state_shardings(mesh, jax.eval_shape(init))
  state = jax.jit(init, out_shardings=state_sharding)()
  parts = dict(nan_policy=config.train.nan_policy)

  def compiled_step(model, lenses, logging):
    if not ensemble:
      return jit_train_step(state_sharding, batch_sharding, replicated, model=model, lenses=lenses, logging=logging,
                            tx=tx, schedule=schedule, **parts)
    step = ensemble_step_fn(members, config.train.steps, model=model, lenses=lenses, logging=logging, **parts)
    return jax.jit(step, in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, replicated),
                   donate_argnums=0)

  per_member = jax.vmap if ensemble else (lambda fn: fn)
  evaluation = lambda lenses, name: jax.jit(
      per_member(functools.partial(eval_step, model=model_for(config.model, lenses), lenses=lenses, loss_name=name)),
      in_shardings=(state_sharding.params, batch_sharding), out_shardings=replicated)
  overlap_fn, persistence = None, None
  if has_ffn(config.model):
    overlap_fn = jax.jit(per_member(functools.partial(heldout_overlap, model=model_for(config.model, every_step))),
                         out_shardings=replicated)
    persistence = functools.partial(probe_persistence, threshold=config.model.active_threshold)
  probe_fn = jax.jit(per_member(functools.partial(
      probe_step, model=model_for(config.model, probe_lenses), train_lenses=probe_train_lenses,
      heldout_lenses=probe_lenses, compare=persistence)),
      in_shardings=(state_sharding.params, batch_sharding, batch_sharding), out_shardings=replicated)
  return Run(config, members, sources, mesh, state, compiled_step(model_plain, every_step, False),
             compiled_step(model_logging, train_lenses, True), evaluation(eval_lenses, "eval/loss"), overlap_fn,
             probe_fn, schedule, train_lenses + eval_lenses + probe_lenses + probe_train_lenses)


def run_optimizer(config: config_lib.Config, members: Sequence[config_lib.Config]):
  """`(tx, schedule)` whose `tx.init` lays out the run's optimiser state.

  In an ensemble, the chain has the coupled weight-decay part when any member decays (as the vmapped step's
  optimisers have, `ensemble_step_fn`), so that the state it initialises is the one the step updates.
  """
  decays = any(member.optim.weight_decay > 0 for member in members)
  return optim.make_optimizer(members[0].optim, config.train.steps, decays=decays)


def state_init(config: config_lib.Config, members: Sequence[config_lib.Config], model, tx,
               lenses: Sequence[Lens]) -> Callable[[], object]:
  """`init() -> TrainState`: the initial state from each member's train.seed, stacked along a leading member axis
  in an ensemble."""
  init_one = lambda seed: create_state(model, tx, config.data.seq_len, seed, lenses)
  if config.train.members == 1:
    return lambda: init_one(members[0].train.seed)
  seeds = jnp.asarray([member.train.seed for member in members], jnp.int32)
  return lambda: jax.vmap(init_one)(seeds)


def abstract_state(config: config_lib.Config, members: Sequence[config_lib.Config] | None = None):
  """The shapes and dtypes of the train state a (prepared) config builds, traced as `build` builds it, without
  computing it: the layout its checkpoints hold."""
  members = list(members or config_lib.member_configs(config))
  train_lenses = lens_lib.train_lenses(config)
  model = model_for(config.model, tuple(lens for lens in train_lenses if lens.every_step))
  tx, _ = run_optimizer(config, members)
  return jax.eval_shape(state_init(config, members, model, tx, train_lenses))


def member_run(run: Run, i: int) -> Run:
  """Member i of an ensemble as a solo Run (its config, source and schedule; the compiled steps stay the
  ensemble's): what a periodic analysis of that member is built from."""
  member = run.members[i]
  return dataclasses.replace(run, config=member, members=[member], sources=[run.sources[i]], state=None,
                             schedule=optim.make_schedule(member.optim, member.train.steps))


def periodic_analyses_of(run: Run, periodic: Sequence[Periodic]) -> list[tuple[int, Callable]]:
  """`(every, fn(state, batch, step) -> metrics)`; in an ensemble, each member's analysis on its slice, its
  metrics stacked along the member axis as the step's are."""
  if not run.ensemble:
    return [(analysis.every, analysis.make(run)) for analysis in periodic]
  built = []
  for analysis in periodic:
    per_member = [analysis.make(member_run(run, i)) for i in range(len(run.members))]

    def ensemble_analysis(state, batch, step, per_member=per_member):
      results = [fn(member_of(state, i), member_of(batch, i), step) for i, fn in enumerate(per_member)]
      return {name: np.stack([np.asarray(result[name]) for result in results]) for name in results[0]}
    built.append((analysis.every, ensemble_analysis))
  return built


def device_batch(run: Run, step: int, split: str = "train", rows: int | None = None):
  """Batch `step` of `split` (`rows` rows, default train.batch_size), this process's rows, placed on the mesh;
  in an ensemble each member's batch from its own source, stacked [N, B, ...]."""
  return _placed(run, lambda source: source.batch(step, rows or run.config.train.batch_size, split=split,
                                                  process_index=jax.process_index(),
                                                  process_count=jax.process_count()))


def _placed(run: Run, read: Callable):
  """`read(source)` (this process's rows) of every member's source, placed on the mesh as `device_batch`'s."""
  local = [read(source) for source in run.sources]
  if not run.ensemble:
    return parallel.shard_batch(local[0], run.mesh)
  return parallel.shard_member_batch({key: np.stack([batch[key] for batch in local]) for key in local[0]}, run.mesh)


def evaluate(run: Run, state, train_batch) -> dict:
  """Held-out metrics after a step (device arrays).

  Scalars are averaged over the fixed held-out batches 0..eval_batches-1; the
  held-out overlap compares the units active on this step's training batch
  with those active on held-out batch 0, of the same size.
  """
  heldout = [device_batch(run, i, split="heldout") for i in range(run.config.logging.eval_batches)]
  results = [run.eval_fn(state.params, b) for b in heldout]
  scalars = jax.tree.map(lambda *xs: sum(xs) / len(xs), *results)
  if run.overlap_fn is not None:
    scalars.update(run.overlap_fn(state.params, train_batch, heldout[0]))
  return scalars


def probe_batches(run: Run):
  """`(training probe, held-out probe)` on the mesh, or None when `stats.probe_tokens` is 0.

  Each holds exactly stats.probe_tokens tokens, probe_tokens / data.seq_len whole sequences (validation
  refuses other sizes), chosen by the sources' `probe` independently of train.seed and data.order_seed: the
  same sequences at every evaluation, for every member of an ensemble and every model.
  """
  tokens = run.config.stats.probe_tokens
  if not tokens:
    return None
  rows = tokens // run.config.data.seq_len
  return tuple(_placed(run, lambda source, split=split: source.probe(
      rows, split=split, process_index=jax.process_index(), process_count=jax.process_count()))
               for split in ("train", "heldout"))


def compile_steps(run: Run, state):
  """Compiles both step variants ahead of time, so that no step of the loop compiles."""
  batch = device_batch(run, 0)
  compiled = []
  for name, fn in (("plain", run.plain_step), ("logging", run.logging_step)):
    start = time.perf_counter()
    compiled.append(fn.lower(state, batch).compile())
    log(f"compiled the {name} step in {time.perf_counter() - start:.1f} s{perf.memory_summary(compiled[-1])}")
  return compiled


def train(config: config_lib.Config, workdir: str, stop_at_step: int | None = None,
          periodic: Sequence[Periodic] = (), members: Sequence[config_lib.Config] | None = None,
          run_dirs: Sequence[str] | None = None) -> object:
  """Trains (or resumes) into `workdir`; returns the final train state.

  `stop_at_step` interrupts the run as a preemption would: a checkpoint at that
  step, then return (the schedule still spans `train.steps`). `periodic`: the
  analyses to run every so many steps, as separate compiled functions, so they
  cost nothing on other steps (`lensjax.runner` chooses them from the config).
  An ensemble (`train.members` > 1) writes one run directory per member,
  WORKDIR/member_<i>/, or into `run_dirs` when it is given its `members`' configs (`config_lib.ensemble_of`).
  Each run directory is locked while the run lasts (lensjax.train.resume): a second trainer is refused.
  """
  # SIGTERM is a stop request from here on: one that comes while the run starts, compiles or writes its last
  # checkpoint stops it cleanly, with what there is saved, instead of killing it halfway.
  with Preemption() as preemption:
    config = prepare(config)
    explicit = members is not None
    members = [prepare(member) for member in members] if explicit else config_lib.member_configs(config)
    run_dirs = (list(run_dirs) if explicit else member_dirs(workdir, len(members)) if config.train.members > 1
                else [workdir])
    if not explicit:  # given run directories are the members' own, each checked against its config
      resume.check_members(workdir, config)
    # The data are read and checked before anything is written: bad input leaves no run directory behind.
    sources = [make_source(member) for member in members]
    locks = resume.claim_run_dirs(run_dirs)
    try:
      return _train(config, workdir, stop_at_step, periodic, members, run_dirs, sources, explicit, preemption)
    finally:
      for lock in locks:
        lock.release()


def _train(config, workdir, stop_at_step, periodic, members, run_dirs, sources, explicit, preemption):
  ensemble = config.train.members > 1
  options = dict(keep=config.checkpoint.keep, async_save=config.checkpoint.async_save,
                 keep_every=config.checkpoint.keep_every, cleanup_unfinished=True, migrate=MIGRATE)
  checkpoints = (EnsembleCheckpoints(run_dirs, members, **options) if ensemble
                 else Checkpoints(os.path.join(workdir, "checkpoints"), **options))
  try:
    return _train_with(config, workdir, stop_at_step, periodic, members, run_dirs, sources, explicit, preemption,
                       checkpoints)
  except BaseException:
    # An unclosed manager reports its background threads' failures at exit, after the one sentence that matters.
    try:
      checkpoints.close()
    except Exception:  # pylint: disable=broad-except  # the error being raised is the one to report
      pass
    raise


def _train_with(config, workdir, stop_at_step, periodic, members, run_dirs, sources, explicit, preemption,
                checkpoints):
  ensemble = config.train.members > 1
  checkpoints.check_compatible(config, resume.resume_config_keys(config),
                              stateful_names(lens_lib.train_lenses(config)))
  resume.check_layouts(checkpoints, abstract_state(config, members), ensemble)
  run = build(config, members=members, sources=sources)
  start_step, restored = checkpoints.restore_latest_valid(abstract_like(run.state))
  state = run.state if restored is None else restored
  start_step = start_step or 0
  if jax.process_index() == 0:
    prepare_run_dirs(run, run_dirs, start_step, restored is not None, checkpoints.directory)
    if ensemble and not explicit:
      write_ensemble_file(workdir, config, len(members))
  one_member_params = member_of(state.params, 0) if ensemble else state.params
  perf_line = perf.describe(one_member_params, config.model, config.data.seq_len)
  log(perf_line + (f"; {len(members)} members in one program" if ensemble else ""))
  loggers = [RunLogger(run_dir, config.train.steps, start_step, len(members) * config.train.batch_size
                       * config.data.seq_len, perf.flops_per_token(one_member_params, config.model, config.data.seq_len),
                       config.logging.progress if i == 0 else "none", config.model.num_layers, run.lenses,
                       per_layer_scalars=config.logging.tb_per_layer_scalars)
             for i, run_dir in enumerate(run_dirs)]
  for logger, member in zip(loggers, members):
    member_dict = config_lib.to_dict(member)
    logger.text(start_step, "run/config", "```json\n" + json.dumps(member_dict, indent=2) + "\n```",
                "the resolved config of this run")
    # Escaped: the text plugin renders Markdown, where the formula's 6*N would turn to italics.
    logger.text(start_step, "run/perf", markdown_escaped(perf_line), "FLOPs per token, parameter count, device")
    logger.hparams(start_step, member_dict)
  logger = EnsembleLogger(loggers) if ensemble else loggers[0]
  try:
    return _train_loop(config, run, state, start_step, logger, checkpoints, periodic, preemption, stop_at_step,
                       members, run_dirs, workdir, explicit)
  finally:
    logger.close()  # the heat maps and events already fetched reach disk when the loop raises too


def _train_loop(config, run, state, start_step, logger, checkpoints, periodic, preemption, stop_at_step, members,
                run_dirs, workdir, explicit):
  total = config.train.steps
  log_every, eval_every, save_every = config.logging.log_every, config.logging.eval_every, config.checkpoint.save_every
  meta = meta_of(config_lib.to_dict(config), state)
  halting, freezing = config.train.nan_policy == "halt", config.train.nan_policy == "freeze"
  streak = (SkipStreak(config.train.max_skipped, run, state)
            if config.train.nan_policy == "skip" and config.train.max_skipped else None)
  frozen: set[int] = set()
  seen_skipped = [0.0]  # the members' skipped updates in all, when last looked at: only a rise is news

  def check_finite(skipped: float) -> None:
    if halting and skipped > 0:
      raise TrainingHalted(halt_message(run, state, checkpoints))
    if freezing and skipped > seen_skipped[0]:
      seen_skipped[0] = skipped
      for member, bad in enumerate(first_bad_steps(state)):
        if bad >= 0 and member not in frozen:
          frozen.add(member)
          log(f"member {member} stopped at step {bad} (non-finite loss or gradient) and is kept as it was before "
               "it; the other members go on")

  saved_step = start_step
  probes = probe_batches(run)
  periodic = periodic_analyses_of(run, periodic)
  if start_step < total and not preemption.requested_before_start():  # stopped while starting: nothing to compile
    plain_step, logging_step = compile_steps(run, state)
    parallel.wait_for_all_processes("steps compiled")  # the loop's first collective waits for no one
  for step in range(start_step, total):
    preempted = preemption.reached(step)
    if preempted or step == stop_at_step:
      why = "SIGTERM" if preempted else "stop requested"
      log(f"{why}: saving a checkpoint at step {step}" if step != saved_step else
          f"{why}: stopping at step {step}, nothing trained since {'the checkpoint' if step else 'the start'}")
      break
    is_log = step % log_every == 0 or step == total - 1
    batch = device_batch(run, step)
    state, metrics = (logging_step if is_log else plain_step)(state, batch)
    check_finite(logger.flush())  # the previous records, now that this step is queued
    if streak is not None:
      streak.update(step, metrics["train/skipped_steps"])
    if is_log:
      logger.add(step, metrics)
      if probes is not None:
        logger.add(step, run.probe_fn(state.params, *probes))
    if eval_every and ((step + 1) % eval_every == 0 or step == total - 1):
      logger.add(step, evaluate(run, state, batch))
    for every, analysis in periodic:
      if (step + 1) % every == 0 or step == total - 1:
        logger.add(step, analysis(state, batch, step))
    if (step + 1) % save_every == 0:
      # The records of the steps before a checkpoint reach metrics.jsonl before it does: a run killed after
      # the checkpoint resumes past them and would never log them again. (The save waits for the step anyway.)
      check_finite(logger.flush())
      check_finite(skipped_steps(state))  # never save a state past a non-finite step
      checkpoints.save(step + 1, state, meta)
      saved_step = step + 1
  check_finite(logger.flush())
  if streak is not None:
    streak.finish()
  logger.close()
  final_step = int(np.max(jax.device_get(state.step)))
  if final_step != saved_step:
    check_finite(skipped_steps(state))
    checkpoints.save(final_step, state, meta)
  checkpoints.close()
  log(f"done at step {final_step}; run director{'ies' if explicit else 'y'} "
       f"{', '.join(run_dirs) if explicit else workdir}")
  return state
