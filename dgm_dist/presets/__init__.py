"""Named configs: the papers' recipes and variants sized for a 2-core CPU, one module per model family.

`dgm-dist train NAME` takes one of these (or a bare model name). Every preset is one
`register_preset("name", ...)` call, so `grep '"name"'` finds its definition.
"""

from dgm_dist.presets import baselines, ladder_vae, semi_supervised, spatial_transformers  # noqa: F401
