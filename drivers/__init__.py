"""Real instruments (pyvisa, pyserial) and the substrate rigs composed from them."""
