"""User-facing errors.

A :class:`UserError` means the input is at fault (a file, key or value). The CLI prints its
message on one line and exits with code 2; library callers can catch it like a ValueError.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message names the file, key or value at fault and says what to do."""
