"""Replay bench: drive the daemon's engine (and baselines) over a recorded or simulated trace.

``chronotick-replay TRACE.csv`` walks the trace in time order, feeds the measurement at each
poll instant to every method, asks every method for (offset, bound) at all other rows and
scores the answers against the truth column or a held-out reference. See docs/replay.md.
"""
