"""Errors a user can act on.

Anything raised as a `TandemError` reaches the user as one line (what went wrong,
where, how to fix it) and a non-zero exit, never as a traceback.
"""


class TandemError(Exception):
    """A failure the user can fix; its message is shown as is."""

    exit_code = 1


class ConfigError(TandemError):
    """The configuration file is unreadable or invalid."""

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class LabError(TandemError):
    """A lab operation failed or was asked of something that does not exist."""
