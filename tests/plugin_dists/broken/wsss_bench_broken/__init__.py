"""A plugin whose import fails, as one with a missing dependency would."""

raise ImportError("wsss_bench_broken needs the package 'not-installed-anywhere'")
