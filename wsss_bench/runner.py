"""Compatibility names from the old ``Runner`` module.

The run now lives in :mod:`wsss_bench.pipeline` (a plan of units, one function per stage, an
executor). Import from there. These names stay importable from here; the ``Runner`` class,
``Job``, ``MethodResult`` and ``plugin_versions`` are gone (see ``pipeline.plan``,
``pipeline.publish`` and ``pipeline.run``).
"""

from wsss_bench.pipeline.cams import compute_cams
from wsss_bench.pipeline.plan import auto_output_stride, derived_seed
from wsss_bench.pipeline.publish import run_and_publish
from wsss_bench.pipeline.settings import EMPTY, RunConfig
from wsss_bench.pipeline.train import predict

__all__ = ["EMPTY", "RunConfig", "auto_output_stride", "compute_cams", "derived_seed",
           "predict", "run_and_publish"]
