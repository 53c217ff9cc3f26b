"""Substrate rigs: `hil.core` devices composed from instruments, declared in the station file.

`smu-rig` (a substrate on source-measure units), `daq-rig` (a DNPU on an NI DAQ card, streaming),
`analog-rig` (an analog chip on a SCPI DAC/ADC board), `crossbar-serial-rig` and
`crossbar-arc2-rig` (memristor arrays on a serial controller or an ArC TWO).
"""
