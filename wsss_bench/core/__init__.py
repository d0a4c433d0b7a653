"""wsss-bench's internals: the store, the slice cache, training, calibration, metrics,
leaderboards, presets and the helpers the pipeline stages use. Not a plugin API: plugin
authors use the modules at the top of :mod:`wsss_bench` (hookspecs, contracts, registry,
options, cam_engine, volumes, download, testing)."""
