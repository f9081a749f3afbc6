"""The one exception type that the CLI turns into a one-line error."""


class VfiomondError(Exception):
    """A condition the user must fix (bad config, missing BCC or privileges)."""

    exit_code = 1


class ConfigError(VfiomondError):
    exit_code = 2
