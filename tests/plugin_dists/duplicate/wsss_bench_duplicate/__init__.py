"""Registers a CAM method called 'gradcam', which the built-ins already use."""

from wsss_bench import hookimpl
from wsss_bench_plugins.cams import GradCAM


@hookimpl
def register_cams(register) -> None:
    register(GradCAM(description="a second gradcam"))
