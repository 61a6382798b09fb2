"""One exception for every bad-input case: the CLI prints its one line and exits with code 2."""


class SpecError(ValueError):
    """Bad study spec or argument. `str(err)` is the whole one-line message (file, field, value, allowed)."""
