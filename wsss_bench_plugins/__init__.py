"""wsss-bench's built-in plugins, each registered through the ``wsss_bench`` entry-point group."""
