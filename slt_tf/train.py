"""train_and_evaluate(config, workdir): the ticket search end to end (the only config reader
besides bin/).

It writes the run directory whose layout `slt_tf.workdir` describes: config.json and
generator.json when the run starts, checkpoints, TensorBoard logs, sample grids, and at the
end the ticket. Only the chief writes there; the other workers of a multi-worker run write the
same files to a temporary directory that is removed at the end (docs/scaling.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time

from absl import logging
import keras
import ml_collections
import numpy as np
import tensorflow as tf

from slt_tf import config_schema as default_config
from slt_tf import callbacks as callbacks_lib
from slt_tf import checkpoints
from slt_tf import classifiers
from slt_tf import data
from slt_tf import distribution
from slt_tf import errors
from slt_tf import evaluation
from slt_tf import features
from slt_tf import gem_miner
from slt_tf import generators
from slt_tf import imp
from slt_tf import init_checkpoint
from slt_tf import masking
from slt_tf import model as model_lib
from slt_tf import moments
from slt_tf import sampling
from slt_tf import ticket as ticket_lib
from slt_tf import workdir as workdir_lib
from slt_tf import workdir_lock

# Keys that may change when a run is resumed (more steps, other logging): the ticket does not
# depend on them (resume_test checks it for each). `resumable_keys(config)` drops num_steps
# under lr_schedule=cosine, whose decay length it sets, and under ema_momentum, whose averaged
# variables replace the trained ones at the last step. All other keys may not change.
RESUMABLE_KEYS = ("num_steps", "checkpoint_every_steps", "log_every_steps",
                  "sample_every_steps", "num_sample_images", "eval.")
# Schema keys that older workdirs' config.json lack.
LATER_KEYS = ("imp.", "gem_miner.", "generator.native_size", "ema_momentum")


def _flatten(config: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in config.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return flat


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Unknown keys, wrong types and bad values raise SltError naming what is allowed."""
  reference = _flatten(default_config.get_config().to_dict())
  given = _flatten(config.to_dict())
  unknown = sorted(set(given) - set(reference))
  if unknown:
    raise errors.SltError(f"unknown config key(s) {', '.join(unknown)}; known keys: "
                          f"{', '.join(sorted(reference))}")
  missing = sorted(set(reference) - set(given))
  if missing:
    raise errors.SltError(f"config lacks key(s) {', '.join(missing)}; start from "
                          "slt_tf.config_schema.get_config()")
  masking.validate_method(config.method)
  masking.validate_keep_fraction(config.keep_fraction)
  init_checkpoint.validate(config.generator.init_checkpoint, config.method)
  if config.lr_schedule not in ("constant", "cosine"):
    raise errors.SltError(f"unknown lr_schedule {config.lr_schedule!r}; choose constant or cosine")
  callbacks_lib.validate_ema_momentum(config.ema_momentum, config.method)
  if config.method == "imp":
    imp_schedule(config).check_lr_schedule(config.lr_schedule)
  if config.method == "gem_miner":
    gem_miner.validate(config.gem_miner.regularization, config.gem_miner.anneal_every,
                       config.gem_miner.anneal_factor, config.generator.score_init)
  generators.validate_name(config.generator.name)
  features.validate_name(config.features.name)
  for key in ("num_steps", "batch_size", "checkpoint_every_steps", "log_every_steps",
              "sample_every_steps", "num_sample_images"):
    if int(config[key]) <= 0:
      raise errors.SltError(f"{key} must be a positive integer, got {config[key]}")
  _check_range("seed", config.seed, 0, ticket_lib.MAX_SEED)
  _check_range("generator.latent_dim", config.generator.latent_dim, 1, ticket_lib.MAX_LATENT_DIM)
  for value in config.generator.filters:
    _check_range("each of generator.filters", value, 1, ticket_lib.MAX_FILTERS)
  _check_range("eval.every_steps", config.eval.every_steps, 0, None)
  data.validate_dataset_name(config.dataset.name)
  data.validate_image_size(config.dataset.name, config.dataset.image_size)
  data.validate_evaluation_split(config.eval.split)
  spec = workdir_lib.spec_from_config(config, channels=1)
  spec.resolved_filters()
  generators.validate_native_size(spec)
  num_weights = sum(int(np.prod(shape)) for key, shape in ticket_lib.expected_arrays(spec).items()
                    if "/moving_" not in key)
  if num_weights > ticket_lib.MAX_WEIGHTS:
    raise errors.SltError(f"the generator would have {num_weights} weights; at most "
                          f"{ticket_lib.MAX_WEIGHTS} are allowed (smaller generator.filters or "
                          "generator.latent_dim)")


def imp_schedule(config) -> imp.Schedule:
  return imp.Schedule(num_steps=config.num_steps, rounds=config.imp.rounds,
                      rewind_step=config.imp.rewind_step, keep_fraction=config.keep_fraction,
                      scope=config.imp.scope)


def total_steps(config) -> int:
  """Optimiser steps of the whole run: num_steps, or IMP's rounds together."""
  return imp_schedule(config).total_steps if config.method == "imp" else config.num_steps


def _check_range(key: str, value, low: int, high: int | None) -> None:
  if (isinstance(value, bool) or not isinstance(value, int) or value < low
      or (high is not None and value > high)):
    allowed = f"in [{low}, {high}]" if high is not None else f">= {low}"
    raise errors.SltError(f"{key} must be an integer {allowed}, got {value!r}")


def resumable_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """RESUMABLE_KEYS, less num_steps under lr_schedule=cosine (the decay length) or
  ema_momentum (the step the averages replace the trained variables)."""
  if (config.lr_schedule == "cosine" or config.ema_momentum
      or config.method == "imp"):  # imp: num_steps sets its rounds.
    return tuple(k for k in RESUMABLE_KEYS if k != "num_steps")
  return RESUMABLE_KEYS


def _resumable(key: str, keys: tuple[str, ...] = RESUMABLE_KEYS) -> bool:
  return any(key == k or (k.endswith(".") and key.startswith(k)) for k in keys)


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, write: bool = True) -> None:
  """Refuses a workdir that holds a run with a different config; writes config.json."""
  resolved = config.to_dict()
  if tf.io.gfile.exists(workdir) and not tf.io.gfile.isdir(workdir):
    raise errors.SltError(f"workdir {workdir} is a file; pass a directory (new or of a "
                          "previous run)")
  previous = workdir_lib.read_config(workdir, required=False, advice="use a new --workdir")
  if previous is not None:
    previous = _flatten(previous.to_dict())
    current = _flatten(json.loads(json.dumps(resolved)))
    defaults = _flatten(json.loads(json.dumps(default_config.get_config().to_dict())))
    for key in set(current) - set(previous):  # Keys added to the schema later, at their
      if key.startswith(LATER_KEYS) and current[key] == defaults.get(key):  # defaults: the
        previous[key] = current[key]  # workdirs written before them still resume.
    keys = resumable_keys(config)
    differing = sorted(k for k in set(previous) | set(current)
                       if previous.get(k) != current.get(k) and not _resumable(k, keys))
    if differing:
      why = ""
      if "num_steps" in differing and "num_steps" not in keys:
        why = (" (num_steps sets the length of lr_schedule=cosine" if config.lr_schedule == "cosine"
               else " (num_steps sets imp's rounds" if config.method == "imp" else
               " (at step num_steps the moving averages of ema_momentum replace the variables")
        why += ", so it cannot change on resume)"
      raise errors.SltError(
          f"workdir {workdir} holds a run with a different config ("
          + ", ".join(f"{k}: {previous.get(k)!r} there, {current.get(k)!r} now" for k in differing)
          + f"){why}; use a new --workdir or the same config")
  elif tf.io.gfile.exists(workdir_lib.checkpoint_dir(workdir)) and tf.io.gfile.listdir(
      workdir_lib.checkpoint_dir(workdir)):
    raise errors.SltError(f"workdir {workdir} holds checkpoints but no "
                          f"{workdir_lib.CONFIG_FILE}; their config is unknown: use a new "
                          "--workdir")
  if write:
    workdir_lib.write_config(workdir, resolved)


def _cache_dir(config) -> str:
  return config.features.cache_dir or os.path.expanduser(classifiers.DEFAULT_CACHE_DIR)


def _weights(value: str):
  return None if value == "none" else value


def prepare_inputs(config) -> None:
  """The explicit first step, before anything is built: the dataset (offline where possible)
  and the dataset classifiers the loss and the periodic evaluation use (trained once, cached)."""
  data.prepare(config.dataset.name, config.dataset.data_dir or None, config.dataset.source_dir)
  names = (list(features.network_names(config.features.name))
           if config.features.weights == "default" else [])
  if config.eval.every_steps and config.eval.weights == "default":
    names.append(config.eval.network or evaluation.default_eval_network(config.dataset.name))
  for name in names:
    network = features.split_copy(name)[0]
    if network in classifiers.RECIPES:
      classifiers.prepare(network, config.dataset.image_size,
                          seed=features.copy_seed(config.seed, name),
                          cache_dir=_cache_dir(config), data_dir=config.dataset.data_dir or None)


def feature_network(config, channels: int):
  return features.build_feature_network(
      config.features.name, image_size=config.dataset.image_size, channels=channels,
      weights=_weights(config.features.weights), cache_dir=_cache_dir(config), seed=config.seed)


def real_moments(config, network) -> tuple[np.ndarray, np.ndarray]:
  """mu_r and var_r over the training split (cached; computed once per key)."""
  name, split = config.dataset.name, data.training_split(config.dataset.name)
  images = data.load_images(name, split, image_size=config.dataset.image_size, batch_size=256,
                            data_dir=config.dataset.data_dir or None)
  key_parts = {"dataset": name, "split": split, "image_size": config.dataset.image_size,
               "data_dir": os.path.abspath(config.dataset.data_dir) if config.dataset.data_dir
                           else "", "features": config.features.name,
               "preprocessing": data.preprocessing_tag(name)}
  return moments.real_feature_moments(network, images, cache_dir=_cache_dir(config),
                                      key_parts=key_parts)


def _optimizer(config) -> keras.optimizers.Optimizer:
  learning_rate = config.learning_rate
  if config.lr_schedule == "cosine":
    learning_rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, config.num_steps)
  return keras.optimizers.Adam(learning_rate, beta_1=config.beta_1, beta_2=config.beta_2,
                               use_ema=config.ema_momentum > 0,
                               ema_momentum=config.ema_momentum)


def build_model(config, strategy, channels: int, real_mean, real_variance):
  """The TicketSearch model and its optimiser, created in the strategy's scope."""
  with strategy.scope():
    network = feature_network(config, channels)
    generator = generators.build(workdir_lib.spec_from_config(config, channels))
    if config.generator.init_checkpoint:  # Frozen weights of a trained dense generator.
      init_checkpoint.initialize(generator, config.generator.init_checkpoint)
    regularizer = None
    if config.method == "gem_miner":
      regularizer = gem_miner.ScoreRegularizer(
          config.gem_miner.regularization, target_keep_fraction=config.keep_fraction,
          anneal_factor=config.gem_miner.anneal_factor)
    search = model_lib.TicketSearch(generator, network, real_mean, real_variance,
                                    latent_seed=config.seed,
                                    ama_learning_rate=config.loss.ama_learning_rate,
                                    score_regularizer=regularizer)
    optimizer = _optimizer(config)
    search.compile(optimizer=optimizer, jit_compile=False)
    optimizer.build(generator.trainable_variables)
  return search


def checkpoint_manager(search, workdir: str, **extras) -> tf.train.CheckpointManager:
  """The run's checkpoints (W/checkpoints) with `extras` (method=imp: its state); a failed save
  (disk full) is a one-line SltError."""
  # The metric trackers too, so that a resumed run logs the same averages.
  checkpoint = tf.train.Checkpoint(generator=search.generator, model=search,
                                   optimizer=search.optimizer,
                                   metrics={t.name: t.variables for t in search.metrics},
                                   **extras)
  return checkpoints.CheckpointManager(checkpoint, workdir_lib.checkpoint_dir(workdir),
                                       max_to_keep=3)


def restore(manager: tf.train.CheckpointManager, path: str | None) -> int:
  """Restores checkpoint `path` (from `checkpoints.resume_point`; None: a fresh start) and
  returns its step. One that does not fit the model raises SltError."""
  if path is None:
    return 0
  try:
    manager.checkpoint.restore(path).assert_existing_objects_matched()
  except Exception as e:  # pylint: disable=broad-except  # TF raises many types; re-raised.
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise errors.SltError(f"cannot restore checkpoint {path} ({reason}); it is from another "
                          f"model or corrupt: resume from an older one with "
                          f"{checkpoints.RESUME_FLAG}=ckpt-N or use a new --workdir") from None
  step = int(manager.checkpoint.optimizer.iterations.numpy())
  logging.info("Resumed from %s at step %d.", path, step)
  return step


def sample_latents(config) -> tf.Tensor:
  """The fixed latents of the sample grids: seeds 0..N-1 (the serving `seeds` signature's)."""
  return sampling.latents(tf.range(config.num_sample_images, dtype=tf.int64),
                          config.generator.latent_dim, stream=0)


def shared_real_moments(config, strategy, channels: int) -> tuple[np.ndarray, np.ndarray]:
  """`real_moments`, computed once by the chief and broadcast bit for bit to every worker."""
  network = feature_network(config, channels)
  if distribution.is_chief(strategy):
    arrays = real_moments(config, network)
  else:
    arrays = [np.zeros([network.feature_dim], np.float32)] * 2
  real_mean, real_variance = distribution.broadcast_from_chief(strategy, list(arrays))
  return real_mean, real_variance


def format_summary(summary: dict) -> str:
  """The few lines a person reads at the end of a run: what was made, where, what next."""
  workdir = summary["workdir"]
  lines = [f"Finished step {summary['step']} in {workdir}."]
  if "ticket" in summary:
    lines += [
        f"Ticket: {summary['ticket']} ({summary['ticket_bytes']:,} bytes, "
        f"{summary['dense_fp32_bytes'] / summary['ticket_bytes']:.0f}x smaller than the "
        f"{summary['dense_fp32_bytes']:,} bytes of float32 weights), keeping "
        f"{summary['num_kept']:,} of {summary['num_weights']:,} weights "
        f"({summary['num_kept'] / summary['num_weights']:.1%}).",
        f"ticket_sha256 {summary['ticket_sha256']}"]
  elif "imp_masks" in summary:
    lines.append(f"IMP: sparse trained generator in {workdir}/checkpoints, masks "
                 f"{summary['imp_masks']} ({summary['num_kept']:,} of {summary['num_weights']:,} "
                 f"kept), {summary['step']} weight updates.")
  else:
    lines.append(f"Dense generator: {workdir}/checkpoints ({summary['dense_fp32_bytes']:,} bytes "
                 "of float32 weights).")
  if "prepare_seconds" in summary:
    lines.append(f"Time: {summary['prepare_seconds']:.0f} s preparing the inputs (dataset, feature "
                 f"networks: cached after the first run), {summary['search_seconds']:.0f} s "
                 "building and searching.")
  lines += [
      f"Samples: {summary['samples']}",
      "Next:",
      f"  python -m bin.evaluate --workdir={workdir}             # FID, KID, IS, PRDC, held-out data",
      f"  python -m bin.export_saved_model --workdir={workdir} --export_dir=exported  # TF Serving",
  ]
  if "ticket" in summary:
    lines.append(f"  python -m bin.inspect_ticket --workdir={workdir}       # kept weights per layer")
  return "\n".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       strategy: tf.distribute.Strategy | None = None,
                       resume_from: str | None = None) -> dict:
  """Runs (or resumes) the search; returns a summary (step, ticket path, sizes, SHA-256).

  Raises:
    SltError: bad config or workdir; callbacks.NonFiniteError when the loss or a score becomes
      NaN/Inf (naming the step); callbacks.Preempted after SIGTERM or SIGINT (a checkpoint
      was saved).
  """
  validate_config(config)
  prepare_workdir(config, workdir, write=False)
  workdir_lock.check_writable_directory(_cache_dir(config), "features.cache_dir")
  chief = workdir_lock.is_chief_task()
  # Before anything is prepared or built: one run per workdir, and a resume point that never
  # silently starts over (slt_tf/checkpoints.py).
  with workdir_lock.WorkdirLock(workdir, enabled=chief):
    resume = checkpoints.resume_point(workdir_lib.checkpoint_dir(workdir), resume_from,
                                      total_steps(config), adopt=chief)
    start = time.perf_counter()
    prepare_inputs(config)
    prepare_seconds = time.perf_counter() - start
    strategy = strategy or distribution.make_strategy()
    write_dir = workdir if distribution.is_chief(strategy) else tempfile.mkdtemp(
        prefix="slt_worker_")
    try:
      summary = _train(config, workdir, write_dir, strategy, resume)
    finally:
      if write_dir != workdir:
        shutil.rmtree(write_dir, ignore_errors=True)
  summary.update(prepare_seconds=round(prepare_seconds, 1),
                 search_seconds=round(time.perf_counter() - start - prepare_seconds, 1))
  return summary


def _train(config, workdir: str, write_dir: str, strategy: tf.distribute.Strategy,
           resume: str | None) -> dict:
  """The run; resumes from `workdir`, writes to `write_dir` (the workdir, or a worker's tmp)."""
  if config.batch_size % strategy.num_replicas_in_sync:
    raise errors.SltError(f"batch_size {config.batch_size} is not divisible by the "
                          f"{strategy.num_replicas_in_sync} replicas")
  channels = data.num_channels(config.dataset.name)
  real_mean, real_variance = shared_real_moments(config, strategy, channels)
  search = build_model(config, strategy, channels, real_mean, real_variance)
  extras, method_callbacks = {}, []
  if config.method == "imp":  # Masks, recorded state and round: checkpointed, driven by a callback.
    extras["imp"], pruning = imp.attach(search, strategy, imp_schedule(config), write_dir)
    method_callbacks.append(pruning)
  if config.method == "gem_miner":
    method_callbacks.append(gem_miner.AnnealRegularization(search.score_regularizer,
                                                           config.gem_miner.anneal_every))
  manager = checkpoint_manager(search, write_dir, **extras)
  start = restore(manager, resume)
  prepare_workdir(config, write_dir)
  workdir_lib.write_generator_spec(write_dir, search.generator.spec)

  batch = config.batch_size
  num_steps = total_steps(config)
  indices = tf.data.Dataset.range(start * batch, num_steps * batch).batch(
      batch, drop_remainder=True)
  # No autotuning for this trivial pipeline: its background thread made the iterator's
  # destruction at the end of fit() wait about 50 s after a 1500-step run.
  options = tf.data.Options()
  options.autotune.enabled = False
  indices = indices.with_options(options)
  upscale = max(1, 64 // config.dataset.image_size)
  train_log_dir = workdir_lib.tensorboard_dir(write_dir, "train")
  callbacks = [
      callbacks_lib.StopOnNonFinite(manager),
      *method_callbacks,  # Before the checkpoints: a checkpoint of step N holds their update.
      callbacks_lib.FinalMovingAverage(num_steps),  # ema_momentum: so do the last step's.
      callbacks_lib.TensorBoardScalars(train_log_dir, config.log_every_steps,
                                       config=json.loads(json.dumps(config.to_dict())),
                                       trial_id=os.path.basename(write_dir.rstrip("/"))),
      callbacks_lib.SampleGrids(write_dir, sample_latents(config), config.sample_every_steps,
                                upscale, log_dir=train_log_dir),
      callbacks_lib.PeriodicCheckpoint(manager, config.checkpoint_every_steps),
  ]
  preemption = callbacks_lib.PreemptionCheckpoint(manager)
  callbacks.append(preemption)
  if config.eval.every_steps:  # FID/KID/PRDC curve on the held-out split (slt_tf.evaluation).
    callbacks.append(evaluation.PeriodicEvaluation(
        evaluation.evaluator_from_config(config), workdir_lib.tensorboard_dir(write_dir, "eval"),
        config.eval.every_steps))
  if start < num_steps:
    logging.info("Training steps %d..%d (%d replicas, global batch %d).", start,
                 num_steps, strategy.num_replicas_in_sync, batch)
    if distribution.is_multi_worker(strategy):  # Keras 3.15 fit() fails there: keras#20585.
      distribution.run_steps(search, strategy, callbacks, start, num_steps, batch)
    else:
      search.fit(indices, epochs=1, callbacks=callbacks, verbose=1)
    preemption.raise_if_preempted()
  else:
    logging.info("Workdir already holds step %d >= num_steps; nothing to train.", start)

  callbacks_lib.write_sample_grid(search.generator, sample_latents(config),
                                  workdir_lib.sample_path(write_dir), upscale)
  step = callbacks_lib.current_step(search)
  summary = {"step": step, "workdir": workdir, "weight_updates": 0 if search.generator.mask_rule
             is not None else step}  # Tickets update scores only; dense and imp, weights.
  if config.method == "imp":  # A sparse TRAINED generator: the checkpoint plus its masks.
    path, kept, total = imp.save_masks(extras["imp"], write_dir)
    summary.update(imp_masks=path, num_kept=kept, num_weights=total)
  elif config.method != "dense":
    ticket = ticket_lib.from_generator(search.generator, {"step": summary["step"]},
                                       init_checkpoint.source_of(
                                           search.generator, config.generator.init_checkpoint))
    path = workdir_lib.ticket_path(write_dir)
    summary.update(ticket=path, ticket_bytes=ticket_lib.save(ticket, path),
                   num_weights=ticket.num_weights, num_kept=ticket.num_kept,
                   ticket_sha256=hashlib.sha256(ticket_lib.to_bytes(ticket)).hexdigest())
  summary["dense_fp32_bytes"] = ticket_lib.dense_fp32_bytes(search.generator)
  summary["samples"] = workdir_lib.sample_path(workdir)
  logging.info("Done: %s", summary)
  return summary
