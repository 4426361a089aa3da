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
        source, field = one_line(self.source, 300), one_line(self.field, 200)
        where = f"{source}: {field}" if field else source
        tail = f" [rule {self.rule}]" if self.rule else ""
        return f"{where}: {one_line(self.message, 600)}{tail}"


def one_line(text: str, limit: int) -> str:
    """``text`` as one printable line of at most about ``limit`` characters: a hostile key or
    value quoted in a message can neither start a new line nor flood the terminal."""
    import unicodedata
    out = []
    for ch in str(text):
        if ch in "\n\r\t" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii") if ch not in "\n\r\t" else repr(ch)[1:-1])
        else:
            out.append(ch)
    line = "".join(out)
    return line if len(line) <= limit else f"{line[:limit]}... ({len(line)} characters)"


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
