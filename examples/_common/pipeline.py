"""Input pipeline over in-memory arrays: batching, data-parallel sharding, prefetch.

The datasets of the examples fit in host memory, so an epoch is a permutation
of indices and a batch is one fancy-indexing gather. A background thread runs
the gathers and the host-to-device copies a few batches ahead of the training
loop, so the accelerator never waits for the host.

Data parallelism uses ``jax.sharding``: a 1-D mesh with axis ``"data"`` over
the local devices, batches split along their leading axis, parameters and
optimizer state replicated. Under ``jit`` XLA then inserts the gradient
all-reduce itself; with one device nothing changes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Batch = dict[str, np.ndarray]

DATA_AXIS = "data"


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh with axis ``"data"`` over ``devices`` (default: all local)."""
  if devices is None:
    devices = jax.local_devices()
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) axis over the mesh's ``"data"`` axis."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh (parameters, optimizer state)."""
  return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> None:
  """Puts the state of NNX objects (model, optimizer) on every mesh device."""
  state = nnx.state(tree)
  nnx.update(tree, jax.device_put(state, replicated_sharding(mesh)))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch_size"):
  """Raises ``ValueError`` unless ``batch_size`` splits evenly over the mesh."""
  n = mesh.devices.size
  if batch_size <= 0 or batch_size % n:
    raise ValueError(
      f"{name} must be a positive multiple of the number of devices ({n}) "
      f"so that every device gets the same share; got {batch_size}."
    )


def batches(
  arrays: Mapping[str, np.ndarray],
  batch_size: int,
  *,
  rng: np.random.Generator | None = None,
  drop_remainder: bool = True,
) -> Iterator[Batch]:
  """Yields dict batches of equal size from arrays sharing a leading axis.

  Args:
    arrays: name -> array, all with the same length.
    batch_size: examples per batch.
    rng: if given, the examples are visited in a random permutation drawn from
      it (one epoch); otherwise in order.
    drop_remainder: drop the last, incomplete batch (training). Otherwise the
      last batch is padded to ``batch_size`` by repeating its first example,
      and every batch carries a float ``"mask"`` (1 for real examples, 0 for
      padding), so evaluation sees a single shape and counts each example once.

  Yields:
    ``{name: array[batch_size, ...]}`` (plus ``"mask"`` when not dropping).
  """
  lengths = {len(a) for a in arrays.values()}
  if len(lengths) != 1:
    raise ValueError(
      f"arrays must share their leading axis; got lengths "
      f"{ {k: len(a) for k, a in arrays.items()} }."
    )
  (n,) = lengths
  order = rng.permutation(n) if rng is not None else np.arange(n)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    idx = order[start : start + batch_size]
    real = len(idx)
    if real < batch_size:
      idx = np.concatenate([idx, np.full(batch_size - real, idx[0])])
    batch = {k: a[idx] for k, a in arrays.items()}
    if not drop_remainder:
      mask = np.zeros(batch_size, np.float32)
      mask[:real] = 1.0
      batch["mask"] = mask
    yield batch


def num_batches(n: int, batch_size: int, drop_remainder: bool) -> int:
  """How many batches :func:`batches` yields for ``n`` examples."""
  return n // batch_size if drop_remainder else -(-n // batch_size)


class _End:
  pass


def prefetch_to_mesh(
  iterable: Iterable[Any], sharding: jax.sharding.Sharding, size: int = 2
) -> Iterator[Any]:
  """Copies pytrees of host arrays to devices ``size`` items ahead, in a thread.

  ``flax.jax_utils.prefetch_to_device`` does the same for ``pmap`` (it splits a
  leading device axis); this one places each leaf with a ``jax.sharding``
  sharding, e.g. :func:`batch_sharding`. Exceptions in the producer are
  re-raised in the consumer; closing the generator early stops the thread.

  Args:
    iterable: yields pytrees of NumPy arrays.
    sharding: where each leaf goes (``jax.device_put``).
    size: how many items to keep in flight.

  Yields:
    The same pytrees as ``jax.Array`` s with ``sharding``.
  """
  buffer: queue.Queue[Any] = queue.Queue(maxsize=size)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        buffer.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterable:
        if not put(jax.device_put(item, sharding)):
          return
      put(_End())
    except BaseException as e:  # pylint: disable=broad-except
      put(e)

  thread = threading.Thread(target=produce, daemon=True)
  thread.start()
  try:
    while True:
      item = buffer.get()
      if isinstance(item, _End):
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    # The producer sees this within 0.1 s and exits (no join: a generator
    # abandoned at interpreter exit must not block or fail here).
    stop.set()
