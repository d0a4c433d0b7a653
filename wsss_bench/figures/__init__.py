"""Figures of a run (issue 14): CAM overlays, threshold landscapes, training curves, rankings.

:mod:`wsss_bench.figures.draw` is the pure drawing layer: it takes plain numpy arrays and small
dataclasses and writes one deterministic PNG per call (matplotlib's Agg canvas, never pyplot).
Collecting the data from a run's store and naming the files is done elsewhere in this package.
"""
