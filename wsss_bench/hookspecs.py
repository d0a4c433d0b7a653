"""Every hook a wsss-bench plugin can implement, documented in one place.

Each hook receives a ``register`` callback. Call ``register(obj)`` once per object; ``obj.name``
must be unique within its kind across all installed plugins (a duplicate is an error naming
both sources). The object must satisfy the matching Protocol in :mod:`wsss_bench.contracts`.

A plugin is a module (or any object) with functions decorated by :data:`wsss_bench.hookimpl`,
declared as an entry point in the ``wsss_bench`` group of its distribution::

    [project.entry-points.wsss_bench]
    my-cams = "my_package.cams"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "wsss_bench"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[[Any], None]


@hookspec
def register_datasets(register: Register) -> None:
    """Register datasets (:class:`wsss_bench.contracts.Dataset`): objects that find cases
    under a root folder and yield their preprocessed 2-D slices and lesion masks."""


@hookspec
def register_backbones(register: Register) -> None:
    """Register backbones (:class:`wsss_bench.contracts.Backbone`): classifier builders that
    also name the layer whose activations the CAM methods use."""


@hookspec
def register_cams(register: Register) -> None:
    """Register CAM methods (:class:`wsss_bench.contracts.Cam`): map a trained classifier and a
    batch of images to activation maps in [0, 1] at input resolution."""


@hookspec
def register_ensembles(register: Register) -> None:
    """Register ensembles (:class:`wsss_bench.contracts.Ensemble`): combine the binary masks
    of M >= 2 backbones into one mask."""


@hookspec
def register_filters(register: Register) -> None:
    """Register filters (:class:`wsss_bench.contracts.Filter`): the region of each slice in
    which CAM values are kept before thresholding."""


@hookspec
def register_executors(register: Register) -> None:
    """Register executors (:class:`wsss_bench.contracts.Executor`): where a stage's units run
    (``--executor NAME``; built-ins ``local``, ``processes`` and ``ray``)."""


@hookspec
def register_methods(register: Register) -> None:
    """Register end-to-end methods (:class:`wsss_bench.contracts.Method`): weakly supervised
    methods that train their own network from image labels and map slices to score maps
    (SEAM, WSS-CMER; ``--methods NAME``), evaluated beside the CAM rows."""
