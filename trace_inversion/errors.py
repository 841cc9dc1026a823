"""The one base class of the errors a user can fix (bad config, data, paths, releases,
review). The CLI catches it once and prints the message, which names the field, row
or path and the fix; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class UserError(Exception):
    """A problem in what the user gave the project, with the fix in its message."""
