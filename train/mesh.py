"""The device mesh, and getting host data onto it: sharded batches, replicated state, and
a grain iterator that keeps the next batches on the devices.

Data parallelism is ``jax.jit`` over a one-axis ``Mesh`` of every device (of every
process): batches are split on the ``'data'`` axis, the state is replicated.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh over every device (of every process), named ``'data'``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """The global batch must split evenly over the devices."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"batch_size={batch_size} does not divide over {n} devices; "
            f"use a multiple of {n}, e.g. {max(n, batch_size // n * n)} or {(batch_size // n + 1) * n}"
        )


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Places this process's part of a global batch on the mesh, split on the batch axis."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree of host-identical values on every device of ``mesh``.

    Works with several processes too, where ``device_put`` cannot reach other hosts'
    devices: each process fills its own devices from its own copy.
    """
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            data = put(jax.random.key_data(x))
            return jax.jit(functools.partial(jax.random.wrap_key_data, impl=impl), out_shardings=sharding)(
                data
            )
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def prefetch_to_mesh(
    batches: Iterable[Mapping[str, np.ndarray]], size: int, mesh: Mesh
) -> Iterator[dict[str, jax.Array]]:
    """Places up to ``size`` batches on the devices ahead of use; transfers are asynchronous,
    so the next batches travel while the current step computes.
    """
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(shard_batch(batch, mesh))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


class DevicePrefetchIterator(grain.DatasetIterator):
    """A grain iterator of host batches, moved onto ``mesh`` ``size`` batches ahead.

    Its state is its parent's state after the last batch it returned, not after the
    batches it holds in advance, so a checkpoint of it (``grain.checkpoint.CheckpointSave``)
    resumes at the first batch the trainer has not used. The ``host_keys`` of each batch
    stay on the host: ``host`` holds those of the batch last returned.
    """

    def __init__(self, parent: grain.DatasetIterator, mesh: Mesh, size: int, host_keys: tuple[str, ...] = ()):
        super().__init__(parent)
        self._mesh, self._size, self._host_keys = mesh, size, host_keys
        self._queue: collections.deque = collections.deque()
        self._state = parent.get_state()
        self.host: dict[str, np.ndarray] = {}

    def __next__(self) -> dict[str, jax.Array]:
        while len(self._queue) <= self._size:
            batch = dict(next(self._parent))
            host = {k: batch.pop(k) for k in self._host_keys if k in batch}
            self._queue.append((shard_batch(batch, self._mesh), host, self._parent.get_state()))
        batch, self.host, self._state = self._queue.popleft()
        return batch

    def get_state(self) -> dict[str, Any]:
        return self._state

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)
        self._queue.clear()
        self._state = state
