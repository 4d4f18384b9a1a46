"""tanhui inversion: configuration, state space, covariances, solvers and outputs."""

__version__ = "0.1.0"
