"""Small argument checks shared by the core modules; each error names the value and what is accepted."""

import math
import numbers

from prunekit.errors import ConfigError, PrunekitTypeError

__all__ = []


def sparsity(name, value):
    """A sparsity in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrunekitTypeError(f"{name} must be a number in [0, 1); got {value!r}")
    value = float(value)
    if not (0.0 <= value < 1.0):
        raise ConfigError(f"{name} must be in [0, 1); got {value!r}")
    return value


def step_count(name, value):
    """A non-negative whole number of steps (an integral float such as 1000.0 is accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrunekitTypeError(f"{name} must be a non-negative integer; got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"{name} must be a whole number of steps; got {value!r}")
    if value < 0:
        raise ConfigError(f"{name} must be >= 0; got {value!r}")
    return int(value)


def frequency(value):
    """Steps between prune events: >= 1; a float is floored (the seed passes steps_per_epoch / 5)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PrunekitTypeError(f"frequency must be a number >= 1; got {value!r}")
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"frequency must be >= 1 (a float is floored); got {value!r}")
    return int(math.floor(value))


def positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def flag(name, value):
    if not isinstance(value, bool):
        raise PrunekitTypeError(f"{name} must be True or False; got {value!r}")
    return value
