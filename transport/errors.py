"""The one error type for bad input: it names the file, the variable and what to do."""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad input detected before heavy work.

    The message reads ``<file>: <variable>: <problem>. <what to do>`` so a user can act on it.
    """

    def __init__(self, path: str | os.PathLike | None, variable: str | None, problem: str, hint: str = ""):
        self.path = None if path is None else os.fspath(path)
        self.variable = variable
        self.problem = problem
        self.hint = hint
        parts = [p for p in (self.path, variable) if p]
        text = ": ".join(parts + [problem])
        if hint:
            text += f". {hint}"
        super().__init__(text)
