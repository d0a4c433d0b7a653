"""The run as a plan of units and one function per stage.

``plan`` lists every unit with its key; ``prepare`` (the slice cache), ``folds`` (the split),
``train``, ``cams`` and ``evaluate`` are the stages (``stage(unit, context) -> result``);
``run`` is the driver that hands each stage's pending units to an executor and stores the
results; ``publish`` turns them into leaderboard rows. ``settings`` separates what determines
the numbers from how the run is executed.
"""
