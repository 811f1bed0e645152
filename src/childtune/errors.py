"""One exception type for bad input: the entrypoints print its message as one line and exit 2."""


class UserError(Exception):
    """A problem with the user's input (config, data, environment) that has a clear fix."""
