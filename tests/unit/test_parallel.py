"""Communicators and the balanced partition of observations (inversion.parallel)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from inversion.parallel import SerialComm, partition, world


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 10, 16, 17, 100, 1001])
def test_partition_is_contiguous_exact_and_balanced(n, size):
    blocks = [partition(n, size, rank) for rank in range(size)]
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    for (start, stop), (next_start, _) in itertools.pairwise(blocks):
        assert stop == next_start  # contiguous, no gap, no overlap
    lengths = [stop - start for start, stop in blocks]
    assert all(length >= 0 for length in lengths) and sum(lengths) == n
    assert max(lengths) - min(lengths) <= 1
    # The longer blocks come first (n % size of them).
    assert lengths == sorted(lengths, reverse=True)
    covered = np.concatenate([np.arange(start, stop) for start, stop in blocks])
    np.testing.assert_array_equal(covered, np.arange(n))


def test_partition_random_sizes():
    rng = np.random.default_rng(0)
    for n, size in zip(rng.integers(0, 10_000, 200), rng.integers(1, 300, 200)):
        n, size = int(n), int(size)
        blocks = [partition(n, size, rank) for rank in range(size)]
        lengths = np.diff(np.array(blocks), axis=1).ravel()
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
        assert lengths.max() - lengths.min() <= 1


@pytest.mark.parametrize("size, rank", [(0, 0), (-1, 0), (2, 2), (2, -1), (3, 5)])
def test_partition_refuses_invalid_ranks(size, rank):
    with pytest.raises(ValueError):
        partition(10, size, rank)


def test_serial_comm():
    comm = SerialComm()
    assert (comm.rank, comm.size, comm.is_root) == (0, 1, True)
    a = np.array([1.0, 2.5, -3.0], dtype=np.float32)
    out = comm.allreduce(a)
    assert out.dtype == np.float64 and out is not a
    np.testing.assert_array_equal(out, a.astype(np.float64))
    out[0] = 99.0
    assert a[0] == 1.0  # a copy, not a view
    block = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(comm.allreduce(block), block)
    value = comm.allreduce_scalar(np.float32(2.5))
    assert type(value) is float and value == 2.5
    obj = {"x": [1, 2]}
    assert comm.bcast(obj, root=0) is obj
    assert comm.gather(obj, root=0) == [obj]
    assert comm.allgather(obj) == [obj]
    assert comm.barrier() is None
    with pytest.raises(SystemExit) as info:
        comm.abort(3)
    assert info.value.code == 3


def test_world_serial_is_serial_comm():
    comm = world("serial")
    assert isinstance(comm, SerialComm) and comm.size == 1 and comm.rank == 0


def test_world_auto_in_a_plain_process_has_size_one():
    """Run in a fresh interpreter (not under mpiexec, no launcher variables), because world()
    may initialise MPI, which must not happen inside the pytest process."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MPI_", "HYDRA_", "SLURM_"))}
    code = ("from inversion.parallel import world, SerialComm; c = world('auto'); "
            "print(type(c).__name__, c.size, c.rank, c.is_root)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    name, size, rank, is_root = out.stdout.split()
    assert (size, rank, is_root) == ("1", "0", "True")
    assert name == "SerialComm"  # a size-1 MPI world is replaced by the serial stand-in
