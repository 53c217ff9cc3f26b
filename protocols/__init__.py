"""Gradient-extraction protocols, optimizers, tasks and training procedures.

Everything here works on the interfaces of `hil.core` only, so the same estimator runs on a
simulator, a rig of real instruments, or a simulator behind a virtual instrument.
"""
