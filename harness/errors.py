"""The one exception type the command line turns into `error: <one line>` and exit code 2."""


class UserError(Exception):
    """Something the user can fix (a suite, a path, a run folder); the message says what and how."""
