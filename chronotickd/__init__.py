"""chronotickd: corrected time with an error bound, served on a Unix socket.

Layout (sources → core → publish → serve): ``sources/`` measure the clock, ``core/`` (pure)
estimates offset and frequency and computes bounds, ``publish`` hands immutable state to
``server``/``handlers``, which answer clients. ``daemon`` wires them together.
"""

__version__ = "0.1.0"
