"""The shared checks of config numbers: each raises a UserError that names the key, the range
and the value. validate.py and the modules whose settings it checks (variants, regularizers)
use these; nothing here imports torch."""
from __future__ import annotations

import math

from .errors import UserError

SEED_RANGE = (0, 2 ** 32 - 1)      # numpy's: np.random.seed refuses anything else


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def positive_int(key: str, value, optional: bool = False, what: str = "a positive integer"
                 ) -> None:
    if optional and value is None:
        return
    if not is_int(value) or value <= 0:
        raise UserError(f"{key} must be {what}{' or null' if optional else ''}, got {value!r}")


def number_in(key: str, value, low: float, high: float, *, low_open: bool = False,
              high_open: bool = False, hint: str = "") -> None:
    """A finite number in the interval; open ends as asked."""
    ok = is_number(value) and (low < value if low_open else low <= value) and \
        (value < high if high_open else value <= high)
    if not ok:
        bounds = "in " + ("(" if low_open else "[") + f"{low}, {high}" + \
            (")" if high_open else "]")
        if high == math.inf:
            bounds = f"{'>' if low_open else '>='} {low}"
        what = "a positive number" if (low, low_open, high) == (0, True, math.inf) else \
            f"a number {bounds}"
        raise UserError(f"{key} must be {what}{hint}, got {value!r}")


def seed(key: str, value, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not is_int(value) or not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise UserError(f"{key} must be an integer in [0, 2**32 - 1], got {value!r}")
