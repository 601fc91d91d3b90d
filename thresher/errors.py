"""Named errors a user can hit. The CLI turns them into a one-line message and exit code 1."""


class ThresherError(Exception):
    """A user-facing error: the message names the file/row and the fix."""


class ConfigError(ThresherError):
    """The project config or an override is invalid."""


class InputError(ThresherError):
    """An input file cannot be read as asked (unreadable, unknown format, missing column)."""


class StageMissingError(ThresherError):
    """A stage needs the output of an earlier stage that has not been run."""


class MissingDependencyError(ThresherError):
    """An optional dependency is not installed; the message carries the install hint."""


class InvalidNameError(ThresherError):
    """A name that becomes a file or folder (run, user, crossfit) breaks the naming rule."""
