"""The one error type users see: a problem in a named file and field, exit code 2."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad input in a profile, recipe or command-line override.

    ``source`` is the file (or ``--set``) the value came from, ``field`` the dotted path
    inside it. The command line prints ``str(error)`` alone, without a traceback, and exits
    with code 2 before anything is written or submitted.
    """

    exit_code = 2

    def __init__(self, source: str, field: str, message: str, *, rule: str | None = None):
        self.source = str(source)
        self.field = field
        self.message = message
        self.rule = rule
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = f"{self.source}: {self.field}" if self.field else self.source
        tail = f" [rule {self.rule}]" if self.rule else ""
        return f"{where}: {self.message}{tail}"


class ConfigErrors(ConfigError):
    """Several problems found at once (each still names its file and field)."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        first = errors[0]
        super().__init__(first.source, first.field, first.message, rule=first.rule)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(e) for e in self.errors)


class RunError(Exception):
    """A failure outside the user's files (Slurm refused, a run is missing, ...): exit 1."""

    exit_code = 1
