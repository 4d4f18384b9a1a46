"""Error hyperparameters from the data: type-II maximum likelihood (``tanhui tune``).

Model.  With the prior x ~ N(x_b, B(θ)) and y = H x + ε, ε ~ N(0, R(θ)), the observations are
marginally Gaussian, y ~ N(H x_b, S(θ)) with S = H B Hᵀ + R, and

    −2 log L(θ) = log det S + dᵀ S⁻¹ d + n_obs log 2π,        d = y − H x_b.

Hyperparameters (all > 0; the optimiser works in φ = log θ, inside the configured bounds):

    sigma:SECTOR        prior σ of the scaling factors of one sector          1
    correlation_length  e-folding length between region centroids            km
    correlation_time    e-folding time between period midpoints              day
    mismatch:GROUP      model–data mismatch of a site or site group g:        mol mol⁻¹ (shown in ppm/ppb)
                        R_ii = σ_meas,i² + m_g² for observations i of g

B(θ) = ⊕_s σ_s² C_t(τ) ⊗ C_x(ℓ) ⊕ (the fixed blocks of the other state elements), with
C = exp(−D/length) (D: distances in km, period separations in days).  Gradient:

    ∂(−log L)/∂φ_j = ½ [tr(S⁻¹ ∂_j S) − αᵀ ∂_j S α],   α = S⁻¹ d,   ∂_j S = H ∂_j B Hᵀ + ∂_j R,
    ∂B/∂log σ_s = 2 σ_s² C_t ⊗ C_x (block s),   ∂B/∂log ℓ = ⊕_s σ_s² C_t ⊗ (C_x ∘ D_x/ℓ),
    ∂B/∂log τ = ⊕_s σ_s² (C_t ∘ D_t/τ) ⊗ C_x,   ∂R_ii/∂log m_g = 2 m_g² [i ∈ g].

* **exact** (``hyper.method = "exact"``): one Cholesky factorisation per θ in the smaller space
  (:mod:`inversion.factorisation`) gives log det S, α, P = Hᵀ S⁻¹ H and diag(S⁻¹), so
  tr(S⁻¹ H ∂B Hᵀ) = tr(P ∂B) and tr(S⁻¹ ∂R) = Σ_i (S⁻¹)_ii ∂R_ii: the gradient is analytic.
* **stochastic** (``"stochastic"``): matrix-free (:mod:`inversion.logdet`): log det by
  stochastic Lanczos quadrature, the traces by Hutchinson, α by CG.  The probes are fixed for
  the whole search (common random numbers), so the objective is a smooth function of θ; its
  standard errors are reported.  When L-BFGS-B stops on a failed line search but every free
  gradient component is within 3 standard errors of zero, the search has converged to the
  precision of the estimate and is reported as such.

Uncertainty of the estimates (Laplace approximation in φ): cov(φ̂) ≈ [∇²_φ(−log L)]⁻¹ at the
optimum, the Hessian by central differences (step 1e-4) of the gradient; then
sd(θ̂) ≈ θ̂·sd(φ̂) and the 95 % interval is θ̂·exp(±1.96 sd(φ̂)).  Parameters that end on a
bound get no interval (flag ``at_bound``); a Hessian that is not positive definite (a
parameter the data do not constrain) is flagged too.

χ² per site: Σ_{i∈site} α_i d_i / n_site.  Its expectation is 1 when S is right
(E[α_i d_i] = (S⁻¹S)_ii = 1), and the sites add up to the total χ² = dᵀ S⁻¹ d.  It is reported
for the initial and the estimated θ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, optimize

from transport.errors import InputError
from transport.units import MOLE_FRACTION_UNITS, conversion_factor

from .config import HYPER_UNITS, Config, HyperConfig
from .covariance import Diagonal, exponential_correlation
from .factorisation import factorise
from .linalg import CovarianceError, cholesky_lower
from .logdet import (
    Derivative,
    MatrixFreeMarginal,
    observation_probes,
    rademacher,
)
from .problem import (
    Problem,
    flux_covariance_blocks,
    period_separation_days,
    with_errors,
    with_flux_errors,
)
from .progress import log
from .state import StateSpace

HESSIAN_STEP = 1e-4  # central-difference step in log-parameters
Z95 = 1.959963984540054
POOLED = "pooled"


# ---- what is estimated ---------------------------------------------------------------------


@dataclass(frozen=True)
class Hyperparameter:
    """One estimated hyperparameter; values in the internal unit of its kind (HYPER_UNITS)."""

    name: str            # "sigma:bio", "correlation_length", "correlation_time", "mismatch:SDZ"
    kind: str
    target: str | None   # sector or site group
    initial: float
    lower: float
    upper: float


@dataclass(frozen=True)
class SiteGroups:
    """Every observed site in one group (its own, a configured one, or the pooled one)."""

    group_of_site: dict[str, str]
    n_obs: dict[str, int]            # per group
    pooled: tuple[str, ...] = ()     # sites pooled for too few observations

    def members(self, group: str) -> list[str]:
        return sorted(s for s, g in self.group_of_site.items() if g == group)


@dataclass(frozen=True)
class Plan:
    """The estimated hyperparameters and the fixed values of the others."""

    parameters: tuple[Hyperparameter, ...]
    groups: SiteGroups
    sigma: dict[str, float]    # per sector (initial or fixed)
    length_km: float
    time_days: float
    species: str = "co2"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]


def display_unit(kind: str, species: str) -> tuple[str, float]:
    """Unit in which a kind is reported and the factor from its internal unit."""
    if kind == "mismatch":
        unit = "ppm" if species == "co2" else "ppb"
        return unit, conversion_factor(MOLE_FRACTION_UNITS, unit)
    return HYPER_UNITS[kind], 1.0


def _site_groups(config: Config, site_counts: Mapping[str, int], estimated: list[str] | None) -> tuple[SiteGroups, list[str]]:
    """Group the sites and choose the groups whose mismatch is estimated (``estimated``: the
    named groups, or None for all); pool or refuse groups with too few observations."""
    hyper, source = config.hyper, config.source
    sites = sorted(site_counts)
    group_of_site: dict[str, str] = {}
    for group, members in hyper.site_groups.items():
        for s in members:
            if s not in site_counts:
                raise InputError(source, f"hyper.site_groups.{group}", f"site {s!r} has no observation in "
                                 f"{config.observations.file}", f"sites present: {', '.join(sites)}")
            group_of_site[s] = group
        if group in site_counts and group not in members:
            raise InputError(source, f"hyper.site_groups.{group}", "the group has the name of another site",
                             "rename the group")
    for s in sites:
        group_of_site.setdefault(s, s)
    groups = sorted(set(group_of_site.values()))
    n_obs = {g: sum(site_counts[s] for s in sites if group_of_site[s] == g) for g in groups}
    if estimated is None:
        chosen = groups
    else:
        chosen = []
        for name in estimated:
            if name not in n_obs:
                where = f" (it is in group {group_of_site[name]!r}: estimate mismatch:{group_of_site[name]})" \
                    if name in group_of_site else ""
                raise InputError(source, "hyper.estimate", f"mismatch:{name} names no site or site group{where}",
                                 f"sites and groups: {', '.join(groups)}")
            chosen.append(name)
    minimum = hyper.min_obs_per_group
    small = [g for g in chosen if n_obs[g] < minimum]
    pooled: tuple[str, ...] = ()
    if small:
        listing = ", ".join(f"{g} ({n_obs[g]} observations)" for g in small)
        if hyper.few_obs == "refuse":
            raise InputError(source, "hyper.min_obs_per_group", f"too few observations to estimate the model–data "
                             f"mismatch of {listing}: each needs at least {minimum}",
                             'pool them (hyper.few_obs = "pool"), group them (hyper.site_groups), lower '
                             "hyper.min_obs_per_group, or do not estimate their mismatch")
        total = sum(n_obs[g] for g in small)
        if total < minimum:
            raise InputError(source, "hyper.min_obs_per_group", f"too few observations to estimate the model–data "
                             f"mismatch of {listing}, even pooled together ({total} < {minimum})",
                             "group them with sites that have more observations (hyper.site_groups), lower "
                             "hyper.min_obs_per_group, or do not estimate their mismatch")
        pooled = tuple(s for s in sites if group_of_site[s] in small)
        name = POOLED if POOLED not in n_obs else POOLED + "_sites"
        log.warning("model–data mismatch: %s have fewer than %d observations each; their mismatch is estimated as "
                    "one pooled group %r (%d observations)", listing, minimum, name, total)
        for s in pooled:
            group_of_site[s] = name
        for g in small:
            del n_obs[g]
        n_obs[name] = total
        chosen = [g for g in chosen if g not in small] + [name]
    return SiteGroups(group_of_site, n_obs, pooled), chosen


def plan_hyperparameters(config: Config, state: StateSpace, site_counts: Mapping[str, int]) -> Plan:
    """Check ``[hyper]`` against the state and the observed sites (``site_counts``: global
    number of observations per site) and list what is estimated.  Cheap: call it before
    reading footprints."""
    hyper, cov, source = config.hyper, config.covariance, config.source
    items = hyper.items()
    mismatch_named = [t for k, t in items if k == "mismatch"]
    estimated_groups = None if None in mismatch_named else mismatch_named
    groups, chosen = _site_groups(config, site_counts, estimated_groups if mismatch_named else [])

    def start(kind: str, configured: float, name: str) -> tuple[float, float, float]:
        lo, hi = hyper.bounds.interval(kind)
        given = hyper.initial.value(kind)
        if given is not None:
            if not lo <= given <= hi:
                raise InputError(source, f"hyper.initial.{kind}", f"initial value {getattr(hyper.initial, kind)!r} "
                                 f"lies outside hyper.bounds.{kind}", "widen the bounds or change the initial value")
            return given, lo, hi
        clipped = min(max(configured, lo), hi)
        if clipped != configured:
            log.warning("%s: the configured value %g is outside hyper.bounds.%s; the search starts at %g", name,
                        configured, kind, clipped)
        return clipped, lo, hi

    params: list[Hyperparameter] = []
    for kind, target in items:
        if kind == "sigma":
            for s in (state.sectors if target is None else (target,)):
                params.append(Hyperparameter(f"sigma:{s}", kind, s, *start(kind, config.prior.sigma_of(s, cov), f"sigma:{s}")))
        elif kind == "correlation_length":
            params.append(Hyperparameter(kind, kind, None, *start(kind, cov.length_km, kind)))
        elif kind == "correlation_time":
            params.append(Hyperparameter(kind, kind, None, *start(kind, cov.time_days, kind)))
    for g in chosen:
        configured = math.sqrt(np.mean([config.observations.mismatch(s) ** 2 for s in groups.members(g)]))
        params.append(Hyperparameter(f"mismatch:{g}", "mismatch", g, *start("mismatch", configured, f"mismatch:{g}")))

    # The largest correlation lengths make B closest to singular: check them once, here.
    kinds = {p.kind for p in params}
    for kind in ("correlation_length", "correlation_time"):
        if kind in kinds:
            length = hyper.bounds.interval("correlation_length")[1] if kind == "correlation_length" else cov.length_km
            time = hyper.bounds.interval("correlation_time")[1] if kind == "correlation_time" else cov.time_days
            try:
                flux_covariance_blocks(state, sigma={s: 1.0 for s in state.sectors}, length_km=length, time_days=time)
            except CovarianceError as exc:
                raise InputError(source, f"hyper.bounds.{kind}", f"the upper bound {getattr(hyper.bounds, kind)[1]!r} "
                                 f"makes the prior correlation matrix singular on this state ({exc})",
                                 "lower the upper bound") from None
    return Plan(parameters=tuple(params), groups=groups, sigma={s: config.prior.sigma_of(s, cov) for s in state.sectors},
                length_km=cov.length_km, time_days=cov.time_days, species=config.run.species)


def site_counts(problem: Problem) -> dict[str, int]:
    """Global number of observations per site (collective)."""
    sites, counts = np.unique(problem.obs["site"].values.astype(str), return_counts=True)
    merged: dict[str, int] = {}
    for part in problem.comm.allgather(dict(zip(sites.tolist(), counts.tolist()))):
        for s, n in part.items():
            merged[s] = merged.get(s, 0) + int(n)
    return merged


# ---- the likelihood ------------------------------------------------------------------------


class _KroneckerSum:
    """∂B = Σ_terms c (A_t ⊗ A_x) on the block of one sector (flux part only); A_t, A_x dense."""

    def __init__(self, terms: list[tuple[slice, float, np.ndarray, np.ndarray]]):
        self.terms = terms

    def apply(self, X: np.ndarray) -> np.ndarray:
        out = np.zeros_like(X)
        for sl, c, At, Ax in self.terms:
            block = X[sl].reshape(At.shape[0], Ax.shape[0], X.shape[1])
            out[sl] = c * np.einsum("ab,bxk,yx->ayk", At, block, Ax).reshape(-1, X.shape[1])
        return out

    def trace(self, P: np.ndarray) -> float:
        """tr(P ∂B)."""
        total = 0.0
        for sl, c, At, Ax in self.terms:
            nt, nx = At.shape[0], Ax.shape[0]
            total += c * float(np.einsum("axby,ba,yx->", P[sl, sl].reshape(nt, nx, nt, nx), At, Ax))
        return total


@dataclass(frozen=True)
class Evaluation:
    """−log L and its gradient in φ = log θ at one point (identical on every rank)."""

    value: float
    gradient: np.ndarray
    value_stderr: float
    gradient_stderr: np.ndarray
    chi2: float
    site_chi2: np.ndarray   # Σ_{i∈site} α_i d_i, sites in Likelihood.sites order
    solves_converged: bool = True
    quadrature_change: float = 0.0  # stochastic: change of −log L from 3k/4 to k Lanczos nodes


class Likelihood:
    """−log L(θ) of one problem: H and d fixed, B(θ) and R(θ) rebuilt for each θ."""

    def __init__(self, problem: Problem, plan: Plan, *, method: str = "exact", form: str = "auto",
                 probes: int = 32, steps: int = 40, seed: int = 0, tol: float = 1e-8, max_iter: int = 500):
        if method not in ("exact", "stochastic"):
            raise ValueError(f"method must be exact or stochastic, got {method!r}")
        self.problem, self.plan, self.method, self.form = problem, plan, method, form
        self.comm = problem.comm
        self.d = problem.departures()
        state = problem.state
        self.D_x = state.regions.distance_km()
        self.D_t = period_separation_days(state)
        block = state.n_period * state.n_region
        self.sector_slice = {s: slice(state.flux_index(i, 0, 0), state.flux_index(i, 0, 0) + block)
                             for i, s in enumerate(state.sectors)}
        self.sites = sorted(plan.groups.group_of_site)
        local_sites = problem.obs["site"].values.astype(str)
        position = {s: i for i, s in enumerate(self.sites)}
        self.site_index = np.array([position[s] for s in local_sites], dtype=np.int64)
        self.site_n = problem.comm.allreduce(np.bincount(self.site_index, minlength=len(self.sites)).astype(float))
        groups = [p.target for p in plan.parameters if p.kind == "mismatch"]
        gpos = {g: i for i, g in enumerate(groups)}
        self.mismatch_position = {j: gpos[p.target] for j, p in enumerate(plan.parameters) if p.kind == "mismatch"}
        self.group_index = np.array([gpos.get(plan.groups.group_of_site[s], -1) for s in local_sites], dtype=np.int64)
        self.meas_var = problem.obs["measurement_sigma"].values ** 2
        self.base_var = problem.R.variance()
        self.log_lower = np.log([p.lower for p in plan.parameters])
        self.log_upper = np.log([p.upper for p in plan.parameters])
        self.n_evaluations = 0
        self.tol, self.max_iter, self.steps = tol, max_iter, steps
        if method == "exact":
            self.H = problem.H.jacobian_local()
        else:
            state_seed, obs_seed = np.random.SeedSequence(seed).spawn(2)
            self.state_probes = rademacher(np.random.default_rng(state_seed), state.size, probes)  # same on all ranks
            self.obs_probes = observation_probes(obs_seed, problem.n_obs, probes, problem.obs_range)

    # -- θ ↦ B, R ------------------------------------------------------------------------------

    def theta(self, phi: np.ndarray) -> np.ndarray:
        return np.exp(np.asarray(phi, dtype=np.float64))

    def _settings(self, phi):
        sigma = dict(self.plan.sigma)
        length, time = self.plan.length_km, self.plan.time_days
        mismatch = []
        for p, value in zip(self.plan.parameters, self.theta(phi)):
            if p.kind == "sigma":
                sigma[p.target] = value
            elif p.kind == "correlation_length":
                length = value
            elif p.kind == "correlation_time":
                time = value
            else:
                mismatch.append(value)
        return sigma, length, time, np.array(mismatch)

    def covariances(self, phi: np.ndarray):
        """(B(θ), local diagonal of R(θ))."""
        sigma, length, time, mismatch = self._settings(phi)
        B = with_flux_errors(self.problem, sigma=sigma, length_km=length, time_days=time)
        r = self.base_var.copy()
        est = self.group_index >= 0
        r[est] = self.meas_var[est] + mismatch[self.group_index[est]] ** 2
        return B, r

    def _derivatives(self, phi) -> list[tuple[_KroneckerSum | None, np.ndarray | None]]:
        sigma, length, time, mismatch = self._settings(phi)
        Ct, Cx = exponential_correlation(self.D_t, time), exponential_correlation(self.D_x, length)
        out = []
        for j, p in enumerate(self.plan.parameters):
            if p.kind == "sigma":
                out.append((_KroneckerSum([(self.sector_slice[p.target], 2 * sigma[p.target] ** 2, Ct, Cx)]), None))
            elif p.kind == "correlation_length":
                dCx = Cx * self.D_x / length
                out.append((_KroneckerSum([(sl, sigma[s] ** 2, Ct, dCx) for s, sl in self.sector_slice.items()]),
                            None))
            elif p.kind == "correlation_time":
                dCt = Ct * self.D_t / time
                out.append((_KroneckerSum([(sl, sigma[s] ** 2, dCt, Cx) for s, sl in self.sector_slice.items()]),
                            None))
            else:
                g = self.mismatch_position[j]
                out.append((None, np.where(self.group_index == g, 2 * mismatch[g] ** 2, 0.0)))
        return out

    # -- evaluation ----------------------------------------------------------------------------

    def __call__(self, phi: np.ndarray) -> Evaluation:
        self.n_evaluations += 1
        phi = np.asarray(phi, dtype=np.float64)
        B, r = self.covariances(phi)
        derivs = self._derivatives(phi)
        e = self._exact(B, r, derivs) if self.method == "exact" else self._stochastic(B, r, derivs)
        # Every rank must take the same optimiser steps: use rank 0's numbers everywhere.
        return self.comm.bcast(e, root=0)

    def _site_chi2(self, alpha: np.ndarray) -> np.ndarray:
        return self.comm.allreduce(np.bincount(self.site_index, alpha * self.d, minlength=len(self.sites)))

    def _constant(self) -> float:
        return self.problem.n_obs * math.log(2 * math.pi)

    def _exact(self, B, r, derivs) -> Evaluation:
        comm = self.comm
        fac = factorise(self.H, B, r, comm, n_obs=self.problem.n_obs, form=self.form)
        alpha = fac.solve(self.d[:, None])[:, 0]
        chi2 = comm.allreduce_scalar(float(self.d @ alpha))
        P = fac.projected_inverse() if any(dB is not None for dB, _ in derivs) else None
        u = comm.allreduce(self.H.T @ alpha)
        s_diag = fac.inverse_diagonal() if any(dR is not None for _, dR in derivs) else None
        grad = np.empty(len(derivs))
        for j, (dB, dR) in enumerate(derivs):
            if dB is not None:
                grad[j] = 0.5 * (dB.trace(P) - u @ dB.apply(u[:, None])[:, 0])
            else:
                grad[j] = 0.5 * comm.allreduce_scalar(float(np.sum(dR * (s_diag - alpha**2))))
        return Evaluation(value=0.5 * (fac.logdet + chi2 + self._constant()), gradient=grad, value_stderr=0.0,
                          gradient_stderr=np.zeros(len(derivs)), chi2=chi2, site_chi2=self._site_chi2(alpha))

    def _stochastic(self, B, r, derivs) -> Evaluation:
        comm = self.comm
        R = Diagonal(r, name="R (this rank's observations)", allow_empty=True)
        marginal = MatrixFreeMarginal(with_errors(self.problem, B=B, R=R), tol=self.tol, max_iter=self.max_iter)
        solved = marginal.solve(np.column_stack([self.d, self.obs_probes]))
        alpha, SZ = solved[:, 0], solved[:, 1:]
        chi2 = comm.allreduce_scalar(float(self.d @ alpha))
        logdet = marginal.logdet(self.state_probes, steps=self.steps)
        traces = marginal.trace_inverse_derivatives(
            self.obs_probes, SZ, [Derivative(dB=None if dB is None else dB.apply, dR=dR) for dB, dR in derivs])
        u = self.problem.H.rmatvec(alpha)
        grad = np.empty(len(derivs))
        for j, (dB, dR) in enumerate(derivs):
            quad = u @ dB.apply(u[:, None])[:, 0] if dB is not None else comm.allreduce_scalar(float(np.sum(dR * alpha**2)))
            grad[j] = 0.5 * (traces.value[j] - quad)
        return Evaluation(value=0.5 * (float(logdet.value) + chi2 + self._constant()), gradient=grad,
                          value_stderr=0.5 * float(logdet.stderr), gradient_stderr=0.5 * np.asarray(traces.stderr),
                          chi2=chi2, site_chi2=self._site_chi2(alpha), solves_converged=marginal.converged,
                          quadrature_change=0.5 * logdet.quadrature_change)


# ---- the search ----------------------------------------------------------------------------


@dataclass
class TuneResult:
    """Estimates, their uncertainties, the optimiser's report and the χ² diagnostics."""

    plan: Plan
    method: str
    phi: np.ndarray                  # log θ̂
    log_sd: np.ndarray               # sd of log θ̂ (NaN where not available)
    at_bound: np.ndarray
    converged: bool
    message: str
    iterations: int
    evaluations: int
    hessian_positive_definite: bool
    initial: Evaluation
    final: Evaluation
    sites: list[str]
    site_n: np.ndarray
    n_obs: int
    notes: list[str] = field(default_factory=list)

    @property
    def estimates(self) -> dict[str, float]:
        """θ̂ by name, internal units."""
        return dict(zip(self.plan.names, np.exp(self.phi).tolist()))

    def parameter_rows(self) -> list[dict]:
        rows = []
        for p, phi, s, bound in zip(self.plan.parameters, self.phi, self.log_sd, self.at_bound):
            unit, f = display_unit(p.kind, self.plan.species)
            value = math.exp(phi)
            ok = bool(np.isfinite(s))
            rows.append({"name": p.name, "kind": p.kind, "unit": unit, "initial": p.initial * f,
                         "estimate": value * f, "sd": value * s * f if ok else None,
                         "ci95": [value * math.exp(-Z95 * s) * f, value * math.exp(Z95 * s) * f] if ok else None,
                         "log_sd": float(s) if ok else None, "lower": p.lower * f, "upper": p.upper * f,
                         "at_bound": bool(bound)})
        return rows

    def site_rows(self) -> list[dict]:
        groups = self.plan.groups.group_of_site
        return [{"site": s, "group": groups[s], "n_obs": int(n), "chi2_per_obs_initial": float(a / n),
                 "chi2_per_obs_final": float(b / n)}
                for s, n, a, b in zip(self.sites, self.site_n, self.initial.site_chi2, self.final.site_chi2)]

    def to_dict(self) -> dict:
        from scipy import stats

        n = self.n_obs
        return {
            "method": self.method,
            "converged": self.converged,
            "message": self.message,
            "notes": self.notes,
            "iterations": self.iterations,
            "evaluations": self.evaluations,
            "hessian_positive_definite": self.hessian_positive_definite,
            "neg_log_likelihood": {"initial": self.initial.value, "final": self.final.value,
                                   "final_stderr": self.final.value_stderr,
                                   "final_quadrature_change": self.final.quadrature_change},
            "gradient": dict(zip(self.plan.names, self.final.gradient.tolist())),
            "gradient_stderr": dict(zip(self.plan.names, self.final.gradient_stderr.tolist())),
            "parameters": self.parameter_rows(),
            "chi2_per_obs": {"initial": self.initial.chi2 / n, "final": self.final.chi2 / n,
                             "95_range": [stats.chi2.ppf(0.025, n) / n, stats.chi2.ppf(0.975, n) / n]},
            "n_obs": n,
            "sites": self.site_rows(),
            "pooled_sites": list(self.plan.groups.pooled),
        }


def _projected(gradient: np.ndarray, phi: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The gradient with components that push against an active bound set to zero."""
    g = gradient.copy()
    g[(phi <= lo + 1e-9) & (g > 0)] = 0.0
    g[(phi >= hi - 1e-9) & (g < 0)] = 0.0
    return g


def _curvature(lik: Likelihood, phi: np.ndarray, free: np.ndarray) -> tuple[np.ndarray, bool]:
    """sd of log θ̂ from the inverse Hessian over the free parameters (NaN elsewhere)."""
    sd = np.full(phi.size, np.nan)
    idx = np.flatnonzero(free)
    if idx.size == 0:
        return sd, True
    hess = np.empty((idx.size, idx.size))
    for col, j in enumerate(idx):
        step = np.zeros_like(phi)
        step[j] = HESSIAN_STEP
        hess[:, col] = (lik(phi + step).gradient[idx] - lik(phi - step).gradient[idx]) / (2 * HESSIAN_STEP)
    hess = 0.5 * (hess + hess.T)
    try:
        C = cholesky_lower(hess, name="Hessian of −log L")
    except CovarianceError:
        return sd, False
    cov = linalg.cho_solve((C, True), np.eye(idx.size))
    sd[idx] = np.sqrt(np.diag(cov))
    return sd, True


def optimise(lik: Likelihood, hyper: HyperConfig) -> TuneResult:
    """Minimise −log L over φ = log θ with L-BFGS-B inside the bounds; never returns the
    start silently: ``converged`` and ``message`` say how the search ended."""
    plan = lik.plan
    phi0 = np.log([p.initial for p in plan.parameters])
    lo, hi = lik.log_lower, lik.log_upper
    cache: dict[bytes, Evaluation] = {}

    def evaluate(phi: np.ndarray) -> Evaluation:
        key = np.asarray(phi, dtype=np.float64).tobytes()
        if key not in cache:
            cache[key] = lik(phi)
        return cache[key]

    def fun(phi):
        e = evaluate(phi)
        return e.value, e.gradient

    initial = evaluate(phi0)
    log.info("type-II ML (%s): %d hyperparameters, −log L at the start = %.6g", lik.method, phi0.size, initial.value)
    res = optimize.minimize(fun, phi0, jac=True, method="L-BFGS-B", bounds=list(zip(lo, hi)),
                            options={"maxiter": hyper.max_iterations, "gtol": hyper.tolerance})
    phi = np.clip(res.x, lo, hi)
    final = evaluate(phi)
    notes = []
    converged = bool(res.success)
    message = str(res.message)
    g = _projected(final.gradient, phi, lo, hi)
    if not converged and lik.method == "stochastic" and np.all(np.abs(g) <= 3 * final.gradient_stderr):
        converged = True
        notes.append("the line search stopped where every free gradient component is within 3 standard errors of "
                     "zero: converged to the precision of the stochastic estimate")
    if lik.method == "stochastic" and abs(final.quadrature_change) > final.value_stderr:
        notes.append(f"the Lanczos quadrature changed −log L by {final.quadrature_change:.3g} between 3/4 and all of "
                     f"its {lik.steps} steps (more than the standard error {final.value_stderr:.3g}): raise "
                     "hyper.lanczos_steps")
    if not final.solves_converged:
        notes.append("some CG solves did not reach solver.tolerance: raise solver.max_iterations")
    at_bound = (phi <= lo + 1e-6) | (phi >= hi - 1e-6)
    if at_bound.any():
        notes.append("estimates on a bound have no interval: " + ", ".join(np.array(plan.names)[at_bound]))
    log_sd, pd = _curvature(lik, phi, ~at_bound)
    if not pd:
        notes.append("the Hessian of −log L is not positive definite: some hyperparameter is not constrained by "
                     "the data (no uncertainty reported)")
    if not converged:
        log.warning("the hyperparameter search did not converge: %s", message)
    return TuneResult(plan=plan, method=lik.method, phi=phi, log_sd=log_sd, at_bound=at_bound, converged=converged,
                      message=message, iterations=int(res.nit), evaluations=lik.n_evaluations,
                      hessian_positive_definite=pd, initial=initial, final=final, sites=lik.sites, site_n=lik.site_n,
                      n_obs=lik.problem.n_obs, notes=notes)


def tune(problem: Problem, plan: Plan | None = None, hyper: HyperConfig | None = None) -> TuneResult:
    """Estimate the hyperparameters of ``problem`` as configured in ``[hyper]`` (collective)."""
    config = problem.config
    hyper = hyper or config.hyper
    plan = plan or plan_hyperparameters(config.model_copy(update={"hyper": hyper}), problem.state, site_counts(problem))
    lik = Likelihood(problem, plan, method=hyper.method, form=config.solver.form, probes=hyper.probes,
                     steps=hyper.lanczos_steps, seed=hyper.seed, tol=config.solver.tolerance,
                     max_iter=config.solver.max_iterations)
    return optimise(lik, hyper)


def settings_toml(result: TuneResult) -> str:
    """The estimated settings as TOML to paste into a case's config.toml."""
    kinds = {p.kind for p in result.plan.parameters}
    est = result.estimates
    species = result.plan.species
    lines = ["# Error settings estimated by `tanhui tune` (type-II maximum likelihood).",
             f"# converged: {str(result.converged).lower()}; see hyper.json for uncertainties."]
    cov = []
    if "sigma" in kinds:
        pairs = ", ".join(f"{p.target} = {est[p.name]:.6g}" for p in result.plan.parameters if p.kind == "sigma")
        cov.append(f"sector_sigma = {{ {pairs} }}")
    if "correlation_length" in kinds:
        cov.append(f'correlation_length = "{est["correlation_length"]:.6g} km"')
    if "correlation_time" in kinds:
        cov.append(f'correlation_time = "{est["correlation_time"]:.6g} day"')
    if cov:
        lines += ["", "[covariance]"] + cov
    if "mismatch" in kinds:
        unit, f = display_unit("mismatch", species)
        pairs = []
        for p in result.plan.parameters:
            if p.kind == "mismatch":
                pairs += [f'{s} = "{est[p.name] * f:.6g} {unit}"' for s in result.plan.groups.members(p.target)]
        lines += ["", "[observations]", f"site_mismatch = {{ {', '.join(pairs)} }}"]
    return "\n".join(lines) + "\n"
