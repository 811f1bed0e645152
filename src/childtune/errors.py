"""One exception type for bad input: the entrypoints print its message as one line and exit 2."""


class UserError(Exception):
    """A problem with the user's input (config, data, environment) that has a clear fix."""


class UnsetValue(UserError):
    """Config values still `???`: values chosen later from another study's table (protocol
    cpu_full's per-variant learning rates, its low-resource sizes)."""

    def __init__(self, keys: list[str]):
        self.keys = keys
        super().__init__(f"waits for {', '.join(keys)} (`???` in the protocol config: set it "
                         f"from the table of the study that chooses it)")


def resolving(build):
    """build() (an OmegaConf resolution), with a `???` value it meets raised as UnsetValue."""
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    try:
        return build()
    except (InterpolationToMissingValueError, MissingMandatoryValue) as exc:
        raise UnsetValue([str(exc).splitlines()[0].rsplit(": ", 1)[-1]]) from None
