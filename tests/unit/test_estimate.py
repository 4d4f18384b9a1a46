"""The memory model of ``tanhui validate`` (inversion/estimate.py) counts what the code holds:
the non-zeros of H it predicts from are exactly those of the H that build_problem forms, and
its per-non-zero costs are the byte sizes of the arrays the build reads."""

from __future__ import annotations

import numpy as np
import pytest

from inversion.config import load_config
from inversion.estimate import (
    CSR_BYTES,
    ProblemSizes,
    estimates,
    extra_h_nonzeros,
    memory_phases,
)
from inversion.parallel import SerialComm
from inversion.problem import build_problem
from tests.casegen import make_case
from transport.store import FootprintStore


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return load_config(make_case(tmp_path_factory.mktemp("estimate"), background_offset=True))


@pytest.fixture(scope="module")
def problem(case):
    return build_problem(case, SerialComm())


def test_h_nonzeros_counted_as_validate_does_equal_the_built_h(case, problem):

    store = FootprintStore(case.transport.footprints)
    counted = sum((store.read_rows(a, b) @ problem.state.E).nnz for a, b in store.iter_row_blocks(nnz_per_block=500))
    assert problem.state.sites  # the offset columns are part of the count
    assert counted + extra_h_nonzeros(problem.state, problem.n_obs) == problem.H.matrix.nnz


def test_per_nonzero_costs_are_the_arrays_the_build_reads(case):
    store = FootprintStore(case.transport.footprints)
    rows = store.read_rows(0, store.n_obs, dtype=np.float64)
    assert rows.dtype == np.float64 and rows.indices.dtype == np.int32
    assert rows.data.nbytes + rows.indices.nbytes == CSR_BYTES * store.nnz


def test_phases_add_up_and_split_over_ranks(problem):
    sizes = ProblemSizes.of(problem.state, problem.n_obs, 10**6, problem.H.matrix.nnz)
    assert sizes.nnz_e == problem.state.E.nnz and sizes.n_columns == problem.state.E.shape[0]
    one, two = memory_phases(sizes, 1, 50), memory_phases(sizes, 2, 50)
    assert two["resident"] == one["resident"]  # replicated
    # each rank reads its own footprint rows and forms its H rows: that part halves
    per_rank_rows = CSR_BYTES * (sizes.nnz + 3 * sizes.nnz_h)
    assert one["build"] - two["build"] == pytest.approx(per_rank_rows / 2)
    rates = {"gemm_flops": 1e10, "bandwidth_bytes": 1e10}
    est = estimates(sizes, 1, 50, rates, read_seconds=1.0)
    for solver in ("variational", "analytical (state form)", "analytical (observation form)"):
        assert est[solver]["memory_bytes"] == pytest.approx(
            one["resident"] + max(one["covariance"], one["build"], one[solver]))
