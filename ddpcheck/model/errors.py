"""The few exception types ddpcheck raises; the CLI turns each into a one-line message and an
exit code."""

from __future__ import annotations

from typing import Optional


class DdpcheckError(Exception):
    """Base class: anything ddpcheck reports to the user without a traceback."""


class ConfigError(DdpcheckError):
    """A bad hosts.yaml or option. Names the file, line and key so the user can fix it (exit 2)."""

    def __init__(self, message: str, source: str = "", line: Optional[int] = None,
                 key: Optional[str] = None) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.key = key
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.source or "<config>"
        if self.line:
            where += f":{self.line}"
        if self.key:
            where += f": {self.key}"
        return f"{where}: {self.message}"


class ConfigErrors(ConfigError):
    """Several problems in one file, each a ``ConfigError``: a line each (file:line: key:
    problem), in the file's order. Its fields are the first problem's."""

    def __init__(self, errors: "list[ConfigError]") -> None:
        self.errors = tuple(errors)
        first = self.errors[0]
        super().__init__(first.message, first.source, first.line, first.key)

    def __str__(self) -> str:
        return "\n".join(ConfigError.__str__(error) for error in self.errors)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, ``kill``): stopped and reported like Ctrl-C, and
    named as itself in the report."""


class HostError(DdpcheckError):
    """A host could not be reached or checked at some stage (ssh, stage0, launch, fetch)."""

    def __init__(self, host: str, stage: str, message: str) -> None:
        self.host = host
        self.stage = stage
        self.message = message
        super().__init__(f"{host}: {stage}: {message}")
