"""How much of a training set is held out for validation when the config does not say."""


def default_holdout(n: int) -> int:
    """10 000 (the papers' sets keep 50 000 or more for training), or a sixth of a smaller training
    set, so that the default fits any dataset: `data.validation` and `data.cluttered.valid_digits`."""
    return min(10_000, n // 6)
