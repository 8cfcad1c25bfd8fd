"""The error a user can fix: a bad recipe, flag, file, row or checkpoint. The commands print it in one line.

`samtok-rl <command>` reports a `UsageError` as `samtok-rl <command>: error: <message>` on stderr with exit status 2;
`--debug` (or `SAMTOK_RL_DEBUG=1`) shows the traceback instead. Any other exception is a bug in samtok-rl or below
it and keeps its traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Something the user gave is wrong; the message names what and where (file, row, field, key, value)."""
