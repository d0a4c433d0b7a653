"""wsss-bench: weakly supervised segmentation of medical images from image-level labels."""

from importlib.metadata import PackageNotFoundError, version

from wsss_bench.hookspecs import hookimpl

try:
    __version__ = version("wsss-bench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"


def load_registry(*args, **kwargs):
    """Discover every installed plugin and return the :class:`~wsss_bench.registry.Registry`."""
    from wsss_bench.registry import load_registry as _load

    return _load(*args, **kwargs)


__all__ = ["__version__", "hookimpl", "load_registry"]
