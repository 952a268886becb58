"""Ray Tune studies over the training engine: YAML search spaces, the study runner, its report."""
