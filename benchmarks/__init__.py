"""Benchmarks of tanhui against the hardware bounds measured in the same run: ``python -m benchmarks --help``."""
