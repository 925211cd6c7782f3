"""User-facing errors: one line that names the problem and the fix; the CLI exits 2 on them."""


class RobustactError(ValueError):
    """A problem with the user's input (paths, names, values). Never raised for internal bugs."""


class DataError(RobustactError):
    """Missing, partial or corrupt dataset files."""


class ConfigError(RobustactError):
    """Unknown preset, bad override, inconsistent configuration."""


class CheckpointError(RobustactError):
    """A checkpoint that cannot be read or does not fit the model."""
