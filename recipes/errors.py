"""The one exception type for errors a user can fix.

Its message names the file, key or line and what was expected; the CLI prints it without a
traceback (`lathe --debug ...` shows one).
"""


class LatheError(Exception):
    """A problem with the user's input or environment, explained in the message."""
