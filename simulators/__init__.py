"""Noisy device simulators on a virtual clock: the hardware in tests, CI and benchmarks."""
