"""The project's one exception family for problems a user caused.

The CLI prints a :class:`UserError` as one line and exits 2; anything else is an internal
bug and keeps its traceback. Each subclass also derives from the built-in type a caller
would naturally catch (``ValueError``, ``FileNotFoundError``).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message says what was wrong, what was expected and what to do."""


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user named (or that a previous step should have made) is absent."""
