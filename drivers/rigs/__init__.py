"""Substrate rigs: `hil.core` devices composed from instruments, declared in the station file.

`smu-rig` (a substrate on source-measure units; with AWG dithers and a lock-in, `dithered`),
`daq-rig` (a DNPU on an NI DAQ card, streaming), `analog-rig` (an analog chip on a SCPI DAC/ADC
board), `crossbar-serial-rig` and `crossbar-arc2-rig` (memristor arrays on a serial controller or
an ArC TWO). `base` holds what they share: settings, channel model, clock, try-every-instrument.
"""
