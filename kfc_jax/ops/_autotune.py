"""``strategy="autotune"``: time the candidate plans once, reuse the winner.

For ``kron_conv`` / ``kron_conv_sum`` the candidates are the two plans
(``"factored"`` and ``"materialize"``), tuned the same way and cached under
their own keys (geometry and term shapes).

On the first use of a (shapes, dtype, precision, device), every candidate plan
of ``kron_matmul`` (each contraction order, and forming ``W`` where the memory
rule of ``"auto"`` allows it) is compiled, warmed up and timed on fresh random
inputs of the same shapes, interleaved, median of a few rounds; the
candidates within 15% of the fastest are then timed again, for three times as
many rounds and against each other only, so a near tie is settled by the
longer measurement. Two objectives are tuned: forward + backward (a training
step's work; the planned backward follows the forward's order, so one choice
serves both) on the first call, and the forward alone on the first call that
nothing differentiates (inference: the planned VJP's primal, which JAX traces
only then, asks for it). The winners are cached in memory and, when a cache directory is
set (``KFC_JAX_CACHE_DIR`` or :func:`set_cache_dir`), in
``<dir>/autotune.json`` so later processes reuse them, like XLA's autotuning
cache.

Timing needs only shapes and dtypes, never the caller's values, so it also
runs when ``kron_matmul`` is traced under ``jit``/``grad``/``vmap``: the
candidates are compiled and run on concrete NumPy inputs outside the trace. If
that fails (a transformation or backend that does not allow it), the cost
model's plan is used and the fallback is logged at WARNING on the ``kfc_jax``
logger.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import statistics
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_LOG = logging.getLogger("kfc_jax")
_CACHE_FILE = "autotune.json"
# Candidates within this factor of the fastest are timed a second time.
REFINE_WITHIN = 1.15
_memory_cache: dict[str, Any] = {}
_lock = threading.Lock()
_cache_dir_override: str | None = None


def cache_dir() -> str | None:
  """The directory of the on-disk caches, or ``None`` (memory only)."""
  if _cache_dir_override is not None:
    return _cache_dir_override or None
  return os.environ.get("KFC_JAX_CACHE_DIR") or None


def set_cache_dir(path: str | None) -> None:
  """Sets (``None``: back to ``$KFC_JAX_CACHE_DIR``) the on-disk cache directory."""
  global _cache_dir_override
  _cache_dir_override = None if path is None else str(path)


def clear_cache(memory: bool = True, disk: bool = False) -> None:
  """Forgets the autotuned plans (in memory, and on disk if ``disk``)."""
  with _lock:
    if memory:
      _memory_cache.clear()
    path = _cache_path()
    if disk and path and os.path.exists(path):
      os.remove(path)


def _cache_path() -> str | None:
  d = cache_dir()
  return os.path.join(d, _CACHE_FILE) if d else None


def _device_name() -> str:
  device = jax.devices()[0]
  return f"{device.platform}:{device.device_kind}"


def cache_key(x_shape, factor_shapes, dtype, precision, pet, objective="fwd+bwd") -> str:
  """The key of one autotuned plan: shapes, dtypes, precision, device and objective."""
  fields = {} if objective == "fwd+bwd" else {"objective": objective}  # old keys stay valid
  return json.dumps(
    {
      **fields,
      "device": _device_name(),
      "x": list(map(int, x_shape)),
      "factors": [list(map(int, s)) for s in factor_shapes],
      "dtype": jnp.dtype(dtype).name,
      "preferred_element_type": None if pet is None else jnp.dtype(pet).name,
      "precision": None if precision is None else str(precision),
    },
    sort_keys=True,
  )


def _load_disk() -> dict[str, Any]:
  path = _cache_path()
  if not path or not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    _LOG.warning("kfc_jax autotune: ignoring unreadable cache %s (%s)", path, e)
    return {}


def _save_disk(key: str, entry: dict[str, Any]) -> None:
  path = _cache_path()
  if not path:
    return
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = _load_disk()
    data[key] = entry
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # atomic: concurrent processes never read half a file
  except OSError as e:
    _LOG.warning("kfc_jax autotune: could not write %s (%s)", path, e)


def _label(strategy: Any) -> str:
  """``"01"`` for the order ``(0, 1)``; ``"materialize"`` as is."""
  return "".join(map(str, strategy)) if isinstance(strategy, tuple) else strategy


def _decode(strategy: Any):
  return tuple(strategy) if isinstance(strategy, list) else strategy


def candidate_strategies(x_shape, factor_shapes, dtype) -> list[Any]:
  """Every plan ``autotune`` times: each order, and ``"materialize"`` when
  ``"auto"`` would be allowed to form ``W`` (no larger than ``x`` and ``y``)."""
  from kfc_jax import ops  # lazily: ops imports this module

  plan = ops.kron_matmul_plan(x_shape, factor_shapes, dtype=dtype)
  out: list[Any] = [c.order for c in plan.candidates if c.strategy == "factored"]
  w_size = math.prod(plan.in_factors) * math.prod(plan.out_factors)
  if w_size <= plan.batch * (math.prod(plan.in_factors) + math.prod(plan.out_factors)):
    out.append("materialize")
  return out


def time_strategies(
  x_shape,
  factor_shapes,
  dtype,
  strategies,
  *,
  precision=None,
  pet=None,
  repeats: int = 5,
  warmup: int = 2,
  objective: str = "fwd+bwd",
) -> dict[Any, float]:
  """Median seconds of each strategy on random inputs of these shapes.

  The candidates are compiled for shapes only and run on NumPy inputs, so this
  works outside and inside a trace. Rounds are interleaved (one call of each
  candidate per round) so a busy machine slows all of them alike.
  """
  from kfc_jax import ops  # lazily: ops imports this module

  rng = np.random.default_rng(0)
  shapes = [tuple(s) if len(s) == 3 else (1, *s) for s in factor_shapes]
  x = rng.standard_normal(tuple(x_shape)).astype(dtype)
  factors = [(rng.standard_normal(s) / math.sqrt(s[1])).astype(dtype) for s in shapes]

  def build(strategy):
    def forward(x, fs):
      return ops.kron_matmul(
        x, fs, strategy=strategy, precision=precision, preferred_element_type=pet
      )

    return _objective_loss(forward, objective)

  return _time_interleaved(build, (x, factors), strategies, repeats, warmup)


def _time_interleaved(build, args, strategies, repeats: int, warmup: int) -> dict[Any, float]:
  """Median seconds of ``build(s)(*args)`` per strategy, compiled for shapes, interleaved."""
  specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
  compiled = {s: jax.jit(build(s)).lower(*specs).compile() for s in strategies}
  for fn in compiled.values():
    for _ in range(warmup):
      jax.block_until_ready(fn(*args))
  samples: dict[Any, list[float]] = {s: [] for s in strategies}
  for _ in range(repeats):
    for s, fn in compiled.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      samples[s].append(time.perf_counter() - start)
  return {s: statistics.median(v) for s, v in samples.items()}


def _objective_loss(forward, objective: str):
  """``forward`` itself (``"fwd"``) or the gradient of its sum w.r.t. both arguments."""
  if objective == "fwd":
    return forward
  return jax.grad(lambda x, fs: jnp.sum(forward(x, fs).astype(jnp.float32)), argnums=(0, 1))


def autotune(
  x_shape,
  factor_shapes,
  *,
  dtype=jnp.float32,
  precision=None,
  preferred_element_type=None,
  repeats: int = 5,
  objective: str = "fwd+bwd",
) -> Any:
  """The measured-fastest strategy of ``kron_matmul`` for these shapes.

  Cached in memory and (with a cache directory) on disk; a cached entry is
  returned without timing.

  Args:
    x_shape: ``[*batch, prod(m_t)]``.
    factor_shapes: each ``(r, m_t, n_t)`` or ``(m_t, n_t)``.
    dtype: element type of ``x`` and the factors.
    precision: as for ``kron_matmul``.
    preferred_element_type: as for ``kron_matmul``.
    repeats: timed rounds per candidate (after warm-up).
    objective: ``"fwd+bwd"`` (a training step's work: what ``kron_matmul``
      uses when it is differentiated) or ``"fwd"`` (inference: what its
      planned VJP's primal uses when it is not).

  Returns:
    A strategy ``kron_matmul`` accepts: a contraction order (tuple) or
    ``"materialize"``; ``"auto"`` when there is nothing to choose (one factor).
  """
  x_shape = (math.prod(x_shape[:-1]), int(x_shape[-1]))
  factor_shapes = [tuple(int(d) for d in s) for s in factor_shapes]
  _check_objective(objective)
  key = cache_key(x_shape, factor_shapes, dtype, precision, preferred_element_type, objective)

  timed = functools.partial(
    time_strategies,
    x_shape,
    factor_shapes,
    dtype,
    precision=precision,
    pet=preferred_element_type,
    objective=objective,
  )
  return _tuned(
    key, lambda: candidate_strategies(x_shape, factor_shapes, dtype), timed, repeats, objective
  )


def _check_objective(objective: str) -> None:
  if objective not in ("fwd", "fwd+bwd"):
    raise ValueError(f'objective must be "fwd" or "fwd+bwd", got {objective!r}.')


def _tuned(key: str, candidates, timed, repeats: int, objective: str) -> Any:
  """The cached winner of ``key``, or the fastest of ``candidates()``, cached.

  ``timed(strategies, repeats=n)`` gives each strategy's median seconds.
  """
  with _lock:
    if key not in _memory_cache:
      entry = _load_disk().get(key)
      if entry is not None:
        _memory_cache[key] = entry
    if key in _memory_cache:
      return _decode(_memory_cache[key]["strategy"])
  strategies = candidates()
  if len(strategies) <= 1:
    return strategies[0] if strategies else "auto"
  times = timed(strategies, repeats=repeats)
  # Plans within the timing noise of the leader (on a shared machine, medians
  # of a few rounds move by 5-15%) are timed again, longer, against each other.
  close = [s for s in strategies if times[s] <= REFINE_WITHIN * min(times.values())]
  if len(close) > 1:
    times.update(timed(close, repeats=3 * repeats))
  best = min(close, key=lambda s: times[s])
  entry = {
    "strategy": list(best) if isinstance(best, tuple) else best,
    "seconds": {_label(s): t for s, t in times.items()},
    "refined": [_label(s) for s in close] if len(close) > 1 else [],
    "objective": objective,
    "date": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  with _lock:
    _memory_cache[key] = entry
    _save_disk(key, entry)
  _LOG.info("kfc_jax autotune: %s -> %s", key, best)
  return best


def autotuned_strategy(
  x_shape, factor_shapes, dtype, precision, pet, objective: str = "fwd+bwd"
) -> Any:
  """``autotune``, or the cost model's ``"auto"`` (logged) if timing fails."""
  try:
    return autotune(
      x_shape,
      factor_shapes,
      dtype=dtype,
      precision=precision,
      preferred_element_type=pet,
      objective=objective,
    )
  except Exception as e:
    return _fallback(e, f"x {tuple(x_shape)}, factors {[tuple(s) for s in factor_shapes]}")


def _fallback(error: Exception, what: str) -> str:
  _LOG.warning(
    "kfc_jax autotune: timing failed (%s: %s); using the cost model's plan for %s.",
    type(error).__name__,
    error,
    what,
  )
  return "auto"


# ---------------------------------------------------------------------------
# Convolutions: "factored" against "materialize"
# ---------------------------------------------------------------------------

CONV_CANDIDATES = ("factored", "materialize")


def conv_cache_key(geo, term_shapes, dtype, precision, pet, objective) -> str:
  """The key of one autotuned conv plan: geometry, term shapes, dtypes, device, objective."""
  return json.dumps(
    {
      "conv": {
        "x": list(geo.x_shape),
        "strides": list(geo.strides),
        "pads": [list(p) for p in geo.pads],
        "dilation": list(geo.dilation),
        "terms": [[list(map(int, s)) for s in t] for t in term_shapes],
      },
      "objective": objective,
      "device": _device_name(),
      "dtype": jnp.dtype(dtype).name,
      "preferred_element_type": None if pet is None else jnp.dtype(pet).name,
      "precision": None if precision is None else str(precision),
    },
    sort_keys=True,
  )


def time_conv_strategies(
  geo,
  term_shapes,
  dtype,
  strategies,
  *,
  precision=None,
  pet=None,
  repeats=5,
  warmup=2,
  objective="fwd+bwd",
) -> dict[str, float]:
  """Median seconds of each conv plan on random inputs of these shapes (interleaved).

  ``geo`` is the validated geometry (``ConvGeometry``: its ``x_shape`` is the
  input the convolution reads, already wrapped for ``"CIRCULAR"``) and
  ``term_shapes`` the 5-D ``(A, B)`` shapes of each term.
  """
  from kfc_jax.ops import _conv  # lazily: ops imports this module

  rng = np.random.default_rng(0)
  x = rng.standard_normal(geo.x_shape).astype(dtype)
  terms = [
    tuple((rng.standard_normal(s) / math.sqrt(math.prod(s[1:4]))).astype(dtype) for s in t)
    for t in term_shapes
  ]

  def build(strategy):
    forward = lambda x, terms: _conv._run(x, terms, strategy, geo, precision, pet)
    return _objective_loss(forward, objective)

  return _time_interleaved(build, (x, terms), strategies, repeats, warmup)


def autotune_conv(
  geo,
  term_shapes,
  *,
  dtype=jnp.float32,
  precision=None,
  preferred_element_type=None,
  repeats: int = 5,
  objective: str = "fwd+bwd",
) -> str:
  """The measured-fastest plan of ``kron_conv_sum`` for this geometry: ``"factored"`` or
  ``"materialize"``; cached like :func:`autotune`'s."""
  _check_objective(objective)
  term_shapes = [tuple(tuple(int(d) for d in s) for s in t) for t in term_shapes]
  key = conv_cache_key(geo, term_shapes, dtype, precision, preferred_element_type, objective)

  timed = functools.partial(
    time_conv_strategies,
    geo,
    term_shapes,
    dtype,
    precision=precision,
    pet=preferred_element_type,
    objective=objective,
  )
  return _tuned(key, lambda: list(CONV_CANDIDATES), timed, repeats, objective)


def autotuned_conv_strategy(geo, term_shapes, dtype, precision, pet, objective="fwd+bwd") -> str:
  """``autotune_conv``, or the cost model's ``"auto"`` (logged) if timing fails."""
  if geo.x_shape[0] == 0:
    return "auto"  # an empty batch: nothing to time
  try:
    return autotune_conv(
      geo,
      term_shapes,
      dtype=dtype,
      precision=precision,
      preferred_element_type=pet,
      objective=objective,
    )
  except Exception as e:
    return _fallback(e, f"the conv of x {geo.x_shape} by terms {list(term_shapes)}")


# ---------------------------------------------------------------------------
# Calibrated cost models (written by ``python -m kfc_jax.calibrate``)
# ---------------------------------------------------------------------------

_CALIBRATION_FILE = "cost_model.json"
_COST_MODEL_FIELDS = (
  "flops_per_second",
  "bytes_per_second",
  "overhead_seconds",
  "full_speed_dim",
  "chunk_bytes",
  "cache_bytes_per_second",
)


def calibration_path() -> str:
  """Where calibrated cost models live: ``$KFC_JAX_CACHE_DIR/cost_model.json``,
  by default ``~/.cache/kfc_jax/cost_model.json``."""
  directory = cache_dir() or os.path.join(os.path.expanduser("~"), ".cache", "kfc_jax")
  return os.path.join(directory, _CALIBRATION_FILE)


def device_key(platform: str | None = None) -> str:
  """``"<platform>:<device kind>"`` of the first device of ``platform``."""
  device = jax.devices(platform)[0] if platform else jax.devices()[0]
  return f"{device.platform}:{device.device_kind}"


_calibration_memo: dict[tuple[str, float], dict[str, Any]] = {}


def load_calibrated(platform: str | None = None) -> dict[str, Any] | None:
  """The calibrated ``CostModel`` fields of this device, or ``None``.

  Read from :func:`calibration_path` (re-read when the file changes); entries
  are keyed by :func:`device_key`, so a file copied between machines only
  applies to the same kind of device.
  """
  path = calibration_path()
  try:
    mtime = os.path.getmtime(path)
  except OSError:
    return None
  memo_key = (path, mtime)
  if memo_key not in _calibration_memo:
    try:
      with open(path) as f:
        _calibration_memo[memo_key] = json.load(f)
    except (OSError, ValueError) as e:
      _LOG.warning("kfc_jax: ignoring unreadable calibration %s (%s)", path, e)
      _calibration_memo[memo_key] = {}
  try:
    key = device_key(platform)
  except RuntimeError:  # no such platform here
    return None
  entry = _calibration_memo[memo_key].get(key)
  if not entry:
    return None
  return {f: entry[f] for f in _COST_MODEL_FIELDS if f in entry}
