"""Firmware developer tools behind `edgegw fw ...`: build, flash, emulate, monitor."""
