"""Compress all-MiniLM-L6-v2's matrices with kfc_jax and distil it back.

One *row* of the sweep: a set of matrices (``"ffn"``: the 12 FFN matrices,
``"attention"``: the 24 attention projections), a method (``"low_rank"`` or
``"kronecker"``), a compression factor (2, 4, 8: that many times fewer kernel
parameters in every replaced matrix) and a calibration (``"weight"``:
minimise ``||W - W_hat||_F``; ``"data"``: minimise ``||X (W - W_hat)||_F``
with ``X`` the matrix's inputs on distillation sentences, via ``input_cov=``).

- Low rank: the largest rank within the budget, ``kfc_jax.low_rank``.
- Kronecker: every split ``(m1, m2) x (n1, n2)`` of the matrix with no factor
  dimension of 1 (those are low rank in disguise), at the largest rank within
  the budget; the split with the lowest weight error (from one spectrum of the
  rearranged matrix per split) wins. Data-aware: the best ``kron_top_splits``
  of those refitted by ``kfc_jax.nearest_kronecker(..., input_cov=C)``, the
  one with the lowest output error kept.

Each row is evaluated as compressed, then distilled from the original model
(cosine loss on the pooled embeddings plus MSE on every layer's hidden
states, optax AdamW, the same steps for every row) and evaluated again. Rows
save their distillation state with orbax every ``checkpoint_every`` steps and
their result as JSON, so a sweep that stops resumes where it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import pathlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

import kfc_jax
from examples.compress_minilm import models

logger = logging.getLogger(__name__)

MATRIX_SETS = ("ffn", "attention")
METHODS = ("low_rank", "kronecker")
CALIBRATIONS = ("weight", "data")
LENGTH_BUCKETS = (16, 32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class Row:
  """One compressed model of the sweep."""

  matrices: str
  method: str
  compression: int
  calibration: str

  def __post_init__(self):
    if self.matrices not in MATRIX_SETS:
      raise ValueError(f"matrices must be one of {MATRIX_SETS}, got {self.matrices!r}.")
    if self.method not in METHODS:
      raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
    if not isinstance(self.compression, int) or self.compression < 2:
      raise ValueError(f"compression must be an int >= 2, got {self.compression!r}.")
    if self.calibration not in CALIBRATIONS:
      raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}.")

  @property
  def name(self) -> str:
    return f"{self.matrices}-{self.method}-{self.compression}x-{self.calibration}"


def rows_of(config: Any) -> list[Row]:
  """The sweep's rows, in the order they run (config order, FFN first)."""
  return [
    Row(m, method, c, cal)
    for m in config.matrices
    for c in config.compressions
    for method in config.methods
    for cal in config.calibrations
  ]


# ----------------------------------------------------------------------------
# Running the model over sentences.
# ----------------------------------------------------------------------------


def _bucket(length: int, max_len: int) -> int:
  return min([b for b in LENGTH_BUCKETS if b >= length] + [max_len])


def batches(
  tokenizer: models.Tokenizer, sentences: Sequence[str], max_len: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """``(indices, ids, mask)`` batches, sentences of similar length together.

  Sorting by length and padding each batch to the next of
  ``LENGTH_BUCKETS`` (at most ``max_len``) keeps padding, and the number of
  compiled shapes, small.
  """
  lengths = np.minimum(tokenizer.count_tokens(sentences), max_len)
  order = np.argsort(lengths, kind="stable")
  for start in range(0, len(order), batch_size):
    idx = order[start : start + batch_size]
    ids, mask = tokenizer.encode(
      [sentences[i] for i in idx], _bucket(int(lengths[idx].max()), max_len)
    )
    if len(idx) < batch_size:  # one shape per bucket: pad the last batch
      pad = batch_size - len(idx)
      ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
      mask = np.concatenate([mask, np.zeros((pad, ids.shape[1]), mask.dtype)])
    yield idx, ids, mask


@nnx.jit
def _embed(model: models.MiniLM, ids: jax.Array, mask: jax.Array) -> jax.Array:
  return model(ids, mask)


def embed(
  model: models.MiniLM,
  tokenizer: models.Tokenizer,
  sentences: Sequence[str],
  *,
  max_len: int,
  batch_size: int = 64,
  desc: str | None = None,
) -> np.ndarray:
  """Sentence embeddings ``[len(sentences), hidden]`` (float32, unit norm)."""
  out = np.zeros((len(sentences), model.config.hidden_size), np.float32)
  total = math.ceil(len(sentences) / batch_size)
  for idx, ids, mask in tqdm.tqdm(
    batches(tokenizer, sentences, max_len, batch_size),
    total=total,
    desc=desc,
    disable=desc is None,
    leave=False,
  ):
    out[idx] = np.asarray(_embed(model, ids, mask))[: len(idx)]
  return out


@nnx.jit
def _second_moments(model: models.MiniLM, ids: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  _, _, inputs = model.encode(ids, mask, capture_inputs=True)
  weights = mask.astype(jnp.float32)[..., None]
  moments = {}
  for path, x in inputs.items():
    x = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
    w = weights.reshape(-1, 1)
    moments[path] = (x * w).T @ x
  return moments


def input_covariances(
  model: models.MiniLM,
  tokenizer: models.Tokenizer,
  sentences: Sequence[str],
  paths: Sequence[str],
  *,
  max_len: int,
  batch_size: int = 32,
  desc: str | None = None,
) -> dict[str, np.ndarray]:
  """``E[x x^T]`` over the non-padding tokens of each matrix's input."""
  sums = {p: 0.0 for p in paths}
  tokens = 0
  total = math.ceil(len(sentences) / batch_size)
  for _idx, ids, mask in tqdm.tqdm(
    batches(tokenizer, sentences, max_len, batch_size),
    total=total,
    desc=desc,
    disable=desc is None,
    leave=False,
  ):
    moments = _second_moments(model, ids, mask)
    for p in paths:
      sums[p] = sums[p] + np.asarray(moments[p], np.float64)
    tokens += int(mask.sum())
  return {p: s / tokens for p, s in sums.items()}


# ----------------------------------------------------------------------------
# Compression of one matrix.
# ----------------------------------------------------------------------------


def _divisors(n: int) -> list[int]:
  return [d for d in range(2, n // 2 + 1) if n % d == 0]


def kronecker_splits(
  n_in: int, n_out: int, budget: int, max_side: int | None = None
) -> list[tuple[tuple[int, int], tuple[int, int], int]]:
  """Every ``((m1, m2), (n1, n2), rank)`` with no factor dimension of 1, at the
  largest rank whose ``rank * (m1 n1 + m2 n2)`` parameters fit in ``budget``.

  Of two splits that swap the factors (same error, same parameters) only the
  one with the smaller first factor is listed. ``max_side`` drops the splits
  whose rearranged ``[m1 n1, m2 n2]`` matrix has both sides above it (the
  near-balanced splits, whose spectra cost the most).
  """
  splits = []
  for m1 in _divisors(n_in):
    for n1 in _divisors(n_out):
      m2, n2 = n_in // m1, n_out // n1
      if (m1 * n1, m1) > (m2 * n2, m2):
        continue
      if max_side is not None and min(m1 * n1, m2 * n2) > max_side:
        continue
      rank = min(budget // (m1 * n1 + m2 * n2), m1 * n1, m2 * n2)
      if rank >= 1:
        splits.append(((m1, m2), (n1, n2), rank))
  return splits


def _rearranged(w: np.ndarray, in_f, out_f) -> np.ndarray:
  (m1, m2), (n1, n2) = in_f, out_f
  return w.reshape(m1, m2, n1, n2).transpose(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


# Squared singular values of rearranged matrices, by (weight digest, split):
# one spectrum serves every budget and calibration of a sweep.
_SPECTRA: dict[tuple[str, tuple, tuple], np.ndarray] = {}


def _squared_spectrum(w: np.ndarray, in_f, out_f) -> np.ndarray:
  key = (hashlib.sha1(w.tobytes()).hexdigest(), tuple(in_f), tuple(out_f))
  if key not in _SPECTRA:
    r = _rearranged(w, in_f, out_f).astype(np.float64)
    gram = r @ r.T if r.shape[0] <= r.shape[1] else r.T @ r
    _SPECTRA[key] = np.sort(np.clip(np.linalg.eigvalsh(gram), 0.0, None))[::-1]
  return _SPECTRA[key]


def ranked_kronecker_splits(
  w: np.ndarray, budget: int, max_side: int | None = None
) -> list[tuple[float, tuple, tuple, int]]:
  """``(weight error, in_factors, out_factors, rank)`` of every split, best first.

  The error of the optimal rank-r fit is the norm of the discarded singular
  values of the rearranged matrix (Van Loan & Pitsianis), so one spectrum per
  split (the eigenvalues of its smaller Gram matrix) prices every rank.
  """
  w = np.asarray(w, np.float32)
  total = float(np.sum(np.square(w, dtype=np.float64)))
  ranked = []
  for in_f, out_f, rank in kronecker_splits(*w.shape, budget, max_side):
    tail = float(np.sum(_squared_spectrum(w, in_f, out_f)[rank:]))
    ranked.append((math.sqrt(max(tail, 0.0) / total), in_f, out_f, rank))
  ranked.sort(key=lambda item: item[0])
  return ranked


def output_error(w: np.ndarray, w_hat: np.ndarray, cov: np.ndarray) -> float:
  """``||S (W - W_hat)|| / ||S W||`` with ``S^T S = cov``: the relative error of
  the matrix's outputs on the inputs ``cov`` was measured on."""
  w, w_hat = np.asarray(w, np.float64), np.asarray(w_hat, np.float64)
  d = w - w_hat
  return math.sqrt(max(float(np.sum(d * (cov @ d))), 0.0) / float(np.sum(w * (cov @ w))))


def _zeros(key, shape, dtype=jnp.float32):
  """Initialiser for layers whose values are set right after: random draws
  compile once per new shape on XLA:CPU, seconds each on a loaded machine."""
  del key
  return jnp.zeros(shape, dtype)


def _has_input_cov(fn) -> bool:
  import inspect  # pylint: disable=g-import-not-at-top

  return "input_cov" in inspect.signature(fn).parameters


def compress_matrix(
  linear: nnx.Linear,
  method: str,
  compression: int,
  *,
  input_cov: np.ndarray | None = None,
  top_splits: int = 3,
  als_sweeps: int = 10,
  max_side: int | None = 384,
) -> tuple[nnx.Module, dict[str, Any]]:
  """The ``kfc_jax.nnx`` layer replacing ``linear`` at ``compression``x fewer
  kernel parameters, and how it was chosen.

  Args:
    linear: the trained dense layer (kernel ``[in, out]``, bias kept as is).
    method: ``"low_rank"`` or ``"kronecker"``.
    compression: the kernel may keep ``in * out // compression`` parameters.
    input_cov: the layer's input second moment for a data-aware fit; ``None``
      for the weight-only fit.
    top_splits: Kronecker, data-aware: how many of the best weight-error
      splits are refitted on the data objective.
    als_sweeps: Kronecker, data-aware: ALS sweeps at most.
    max_side: Kronecker: splits tried (see :func:`kronecker_splits`).

  Returns:
    ``(layer, info)``; ``info`` has the factor shapes, rank, parameters and
    the weight error (and, data-aware, the output error on the calibration
    inputs, and the split runner-up).
  """
  w = np.asarray(linear.kernel[...], np.float64)
  bias = np.asarray(linear.bias[...])
  n_in, n_out = w.shape
  budget = n_in * n_out // compression
  data_aware = input_cov is not None
  if data_aware and not (
    _has_input_cov(kfc_jax.low_rank) and _has_input_cov(kfc_jax.nearest_kronecker)
  ):
    raise RuntimeError(
      "Data-aware rows need kfc_jax.low_rank and "
      "kfc_jax.nearest_kronecker with input_cov= (issue 10)."
    )
  extra = {"input_cov": input_cov} if data_aware else {}
  rngs = nnx.Rngs(0)
  if method == "low_rank":
    rank = budget // (n_in + n_out)
    if rank < 1:
      raise ValueError(f"compression {compression} leaves no rank for a {n_in}x{n_out} matrix.")
    u, v = kfc_jax.low_rank(w, rank, **extra)
    layer = kfc_jax.nnx.LowRankLinear(
      n_in, n_out, rank=rank, factor_init=_zeros, bias_init=_zeros, rngs=rngs
    )
    layer.u[...] = jnp.asarray(u, jnp.float32)
    layer.v[...] = jnp.asarray(v, jnp.float32)
    info = {"rank": rank, "params": rank * (n_in + n_out)}
    w_hat = np.asarray(u) @ np.asarray(v)
  elif method == "kronecker":
    ranked = ranked_kronecker_splits(w, budget, max_side)
    if not ranked:
      raise ValueError(f"No Kronecker split of a {n_in}x{n_out} matrix fits {budget} parameters.")
    if data_aware:
      fits = []
      for _, in_f, out_f, rank in ranked[:top_splits]:
        dec = kfc_jax.nearest_kronecker(w, in_f, out_f, rank, max_sweeps=als_sweeps, **extra)
        fits.append((float(dec.data_error), in_f, out_f, rank, dec))
      fits.sort(key=lambda item: item[0])
      _, in_f, out_f, rank, dec = fits[0]
      runner_up = fits[1][:4] if len(fits) > 1 else None
    else:
      _, in_f, out_f, rank = ranked[0]
      dec = kfc_jax.nearest_kronecker(w, in_f, out_f, rank)
      runner_up = ranked[1] if len(ranked) > 1 else None
    layer = kfc_jax.nnx.KroneckerLinear(
      n_in,
      n_out,
      in_factors=in_f,
      out_factors=out_f,
      rank=rank,
      factor_init=_zeros,
      bias_init=_zeros,
      rngs=rngs,
    )
    layer.factor_0_0[...] = jnp.asarray(dec.factors[0], jnp.float32)
    layer.factor_0_1[...] = jnp.asarray(dec.factors[1], jnp.float32)
    a, b = (np.asarray(f, np.float64) for f in dec.factors)
    w_hat = sum(np.kron(a[r], b[r]) for r in range(rank))
    info = {
      "in_factors": list(in_f),
      "out_factors": list(out_f),
      "rank": rank,
      "params": rank * (in_f[0] * out_f[0] + in_f[1] * out_f[1]),
      "splits_tried": len(ranked),
      "runner_up": None
      if runner_up is None
      else {
        "error": runner_up[0],
        "in_factors": list(runner_up[1]),
        "out_factors": list(runner_up[2]),
        "rank": runner_up[3],
      },
    }
  else:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  layer.bias[...] = jnp.asarray(bias, jnp.float32)
  info["dense_params"] = n_in * n_out
  info["weight_error"] = float(np.linalg.norm(w - w_hat) / np.linalg.norm(w))
  if data_aware:
    info["calibration_output_error"] = output_error(w, w_hat, input_cov)
  return layer, info


def materialize(layer: nnx.Module) -> np.ndarray:
  """The ``[in, out]`` kernel of a dense, low-rank or Kronecker layer."""
  if isinstance(layer, nnx.Linear):
    return np.asarray(layer.kernel[...])
  if isinstance(layer, kfc_jax.nnx.LowRankLinear):
    return np.asarray(layer.u[...]) @ np.asarray(layer.v[...])
  return np.asarray(layer.materialize())


def compress_model(
  teacher: models.MiniLM,
  row: Row,
  *,
  covariances: dict[str, np.ndarray] | None = None,
  top_splits: int = 3,
  als_sweeps: int = 10,
  max_side: int | None = 384,
  paths: Sequence[str] | None = None,
  progress: bool = True,
) -> tuple[models.MiniLM, dict[str, Any]]:
  """A copy of ``teacher`` with ``row``'s matrices (or ``paths``) replaced,
  and the per-matrix infos of :func:`compress_matrix`."""
  student = nnx.clone(teacher)
  paths = teacher.matrix_paths(row.matrices) if paths is None else list(paths)
  if row.calibration == "data" and covariances is None:
    raise ValueError(f"Row {row.name} is data-aware and needs covariances.")
  infos = {}
  for path in tqdm.tqdm(paths, desc=f"compress {row.name}", disable=not progress, leave=False):
    cov = covariances[path] if row.calibration == "data" else None
    layer, infos[path] = compress_matrix(
      teacher.get_matrix(path),
      row.method,
      row.compression,
      input_cov=cov,
      top_splits=top_splits,
      als_sweeps=als_sweeps,
      max_side=max_side,
    )
    student.set_matrix(path, layer)
  return student, infos


def with_structure(
  teacher: models.MiniLM, method: str, infos: dict[str, dict[str, Any]]
) -> models.MiniLM:
  """A copy of ``teacher`` whose matrices at ``infos``' paths have the recorded
  structure (rank, factor shapes), randomly initialised: for timing."""
  model = nnx.clone(teacher)
  rngs = nnx.Rngs(0)
  for path, info in infos.items():
    n_in, n_out = np.shape(teacher.get_matrix(path).kernel[...])
    if method == "low_rank":
      layer = kfc_jax.nnx.LowRankLinear(
        n_in, n_out, rank=info["rank"], factor_init=_zeros, bias_init=_zeros, rngs=rngs
      )
    else:
      layer = kfc_jax.nnx.KroneckerLinear(
        n_in,
        n_out,
        in_factors=tuple(info["in_factors"]),
        out_factors=tuple(info["out_factors"]),
        rank=info["rank"],
        factor_init=_zeros,
        bias_init=_zeros,
        rngs=rngs,
      )
    model.set_matrix(path, layer)
  return model


# ----------------------------------------------------------------------------
# Distillation.
# ----------------------------------------------------------------------------


def trainable(path: tuple[Any, ...], value: Any) -> bool:
  """Every parameter but the embedding tables (frozen: most of the model's
  parameters, untouched by the compression, and the costliest to update)."""
  return isinstance(value, nnx.Param) and not any("embeddings" in str(part) for part in path)


def distillation_loss(
  student: models.MiniLM,
  teacher: models.MiniLM,
  ids: jax.Array,
  mask: jax.Array,
  hidden_weight: float,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``1 - cos`` of the pooled embeddings, plus ``hidden_weight`` times the
  masked MSE of every layer's hidden states."""
  s_emb, s_hidden, _ = student.encode(ids, mask)
  t_emb, t_hidden, _ = teacher.encode(ids, mask)
  t_emb = jax.lax.stop_gradient(t_emb)
  valid = mask.sum(-1) > 0
  cos = jnp.sum(s_emb * t_emb, -1)
  cos_loss = jnp.sum(jnp.where(valid, 1.0 - cos, 0.0)) / jnp.maximum(valid.sum(), 1)
  m = mask.astype(jnp.float32)[..., None]
  hidden = sum(
    jnp.sum(m * (s - jax.lax.stop_gradient(t)) ** 2)
    for s, t in zip(s_hidden[1:], t_hidden[1:], strict=False)
  )
  hidden = hidden / (len(s_hidden) - 1) / jnp.maximum(m.sum(), 1) / s_emb.shape[-1]
  return cos_loss + hidden_weight * hidden, {"cos_loss": cos_loss, "hidden_mse": hidden}


@nnx.jit(static_argnames=("hidden_weight",))
def train_step(
  student: models.MiniLM,
  teacher: models.MiniLM,
  optimizer: nnx.Optimizer,
  ids: jax.Array,
  mask: jax.Array,
  hidden_weight: float,
) -> dict[str, jax.Array]:
  grad_fn = nnx.value_and_grad(distillation_loss, has_aux=True, argnums=nnx.DiffState(0, trainable))
  (loss, aux), grads = grad_fn(student, teacher, ids, mask, hidden_weight)
  optimizer.update(student, grads)
  return {"loss": loss, **aux}


def make_optimizer(student: models.MiniLM, config: Any) -> nnx.Optimizer:
  """AdamW with linear warm-up and cosine decay over ``distill_steps``."""
  steps = config.distill_steps
  warmup = min(config.warmup_steps, max(steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, config.learning_rate, warmup, max(steps, warmup + 1)
  )
  tx = optax.chain(
    optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=config.weight_decay)
  )
  return nnx.Optimizer(student, tx, wrt=trainable)


def distillation_batches(
  tokenizer: models.Tokenizer,
  sentences: Sequence[str],
  *,
  steps: int,
  batch_size: int,
  max_len: int,
  seed: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """``steps`` batches drawn without replacement (reshuffled per pass)."""
  rng = np.random.default_rng(seed)
  order = np.array([], np.int64)
  for _ in range(steps):
    if len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(len(sentences))])
    idx, order = order[:batch_size], order[batch_size:]
    yield tokenizer.encode([sentences[i] for i in idx], max_len)


def _save_state(directory: pathlib.Path, student, optimizer, step: int) -> None:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  state = {
    "model": nnx.state(student, nnx.Param),
    "optimizer": nnx.state(optimizer, nnx.Not(nnx.RngState)),
  }
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save((directory / "state").resolve(), jax.device_get(state), force=True)
  tmp = directory / "step.json.tmp"
  tmp.write_text(json.dumps({"step": step}))
  tmp.replace(directory / "step.json")


def _restore_state(directory: pathlib.Path, student, optimizer) -> int:
  if not (directory / "step.json").is_file():
    return 0
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  abstract = jax.tree.map(
    np.asarray,
    {
      "model": nnx.state(student, nnx.Param),
      "optimizer": nnx.state(optimizer, nnx.Not(nnx.RngState)),
    },
  )
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore((directory / "state").resolve(), abstract)
  nnx.update(student, state["model"])
  nnx.update(optimizer, state["optimizer"])
  return json.loads((directory / "step.json").read_text())["step"]


def distill(
  student: models.MiniLM,
  teacher: models.MiniLM,
  tokenizer: models.Tokenizer,
  sentences: Sequence[str],
  config: Any,
  *,
  seed: int,
  checkpoint_dir: pathlib.Path | None = None,
  desc: str = "distil",
) -> dict[str, Any]:
  """Distils ``teacher`` into ``student`` (in place) for ``distill_steps``.

  With ``checkpoint_dir`` the state is saved every ``checkpoint_every``
  steps and a run that finds one there continues from it.

  Returns:
    ``{"losses": [...], "seconds_per_step": ...}`` over the steps run here.
  """
  optimizer = make_optimizer(student, config)
  start = 0
  if checkpoint_dir is not None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    start = _restore_state(checkpoint_dir, student, optimizer)
  stream = distillation_batches(
    tokenizer,
    sentences,
    steps=config.distill_steps,
    batch_size=config.batch_size,
    max_len=config.distill_max_len,
    seed=seed,
  )
  losses, times = [], []
  with tqdm.tqdm(
    total=config.distill_steps, initial=start, desc=desc, disable=not config.progress, leave=False
  ) as bar:
    for step, (ids, mask) in enumerate(stream):
      if step < start:
        continue  # the stream is replayed so the data order does not change
      t0 = time.perf_counter()
      metrics = train_step(
        student, teacher, optimizer, ids, mask, hidden_weight=config.hidden_weight
      )
      loss = float(metrics["loss"])
      times.append(time.perf_counter() - t0)
      losses.append(loss)
      bar.update(1)
      bar.set_postfix(loss=f"{loss:.4f}")
      done = step + 1
      if (
        checkpoint_dir is not None
        and config.checkpoint_every
        and done % config.checkpoint_every == 0
        and done < config.distill_steps
      ):
        _save_state(checkpoint_dir, student, optimizer, done)
  # The first step compiles; report the median of the rest.
  steady = times[1:] or times
  return {
    "losses": losses,
    "first_step": start,
    "seconds_per_step": float(np.median(steady)) if steady else None,
  }


# ----------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------


def embedding_metrics(student_emb: np.ndarray, teacher_emb: np.ndarray) -> dict[str, float]:
  """Mean and 5th-percentile cosine to the teacher's embeddings, and retrieval
  top-1: how often a sentence's nearest teacher embedding is its own."""
  cos = np.sum(student_emb * teacher_emb, -1) / (
    np.linalg.norm(student_emb, axis=-1) * np.linalg.norm(teacher_emb, axis=-1)
  )
  nearest = np.argmax(student_emb @ teacher_emb.T, axis=-1)
  return {
    "mean_cosine": float(np.mean(cos)),
    "p5_cosine": float(np.percentile(cos, 5)),
    "top1": float(np.mean(nearest == np.arange(len(cos)))),
  }


def matrix_output_errors(
  student: models.MiniLM,
  teacher: models.MiniLM,
  paths: Sequence[str],
  covariances: dict[str, np.ndarray],
) -> dict[str, float]:
  """Each replaced matrix's relative output error on the original model's
  inputs to it (``covariances``), its bias left out."""
  return {
    p: output_error(
      materialize(teacher.get_matrix(p)), materialize(student.get_matrix(p)), covariances[p]
    )
    for p in paths
  }


def time_encoders(
  encoders: dict[str, models.MiniLM],
  *,
  batch_size: int = 32,
  seq_len: int = 128,
  rounds: int = 5,
  seed: int = 0,
) -> dict[str, float]:
  """Median seconds per forward of each encoder, measured interleaved.

  Every encoder is compiled and run once first; then each round runs every
  encoder once, in turn, so load from other work hits them alike.
  """
  rng = np.random.default_rng(seed)
  ids = jnp.asarray(rng.integers(1000, 29000, (batch_size, seq_len)), jnp.int32)
  mask = jnp.ones_like(ids)
  times = {name: [] for name in encoders}
  for model in encoders.values():
    _embed(model, ids, mask).block_until_ready()
  for _ in range(rounds):
    for name, model in encoders.items():
      t0 = time.perf_counter()
      _embed(model, ids, mask).block_until_ready()
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(t)) for name, t in times.items()}
