"""One exception for every bad-input case: the CLI prints its one line and exits with code 2.

It is `vtp_core.cfg.ConfigError` under the name the sweep code uses: the config loader and the
planner raise the same class."""
from vtp_core.cfg import ConfigError as SpecError

__all__ = ["SpecError"]
