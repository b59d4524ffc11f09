"""One error family for prunekit.

Every error prunekit raises on bad input derives from :class:`PrunekitError` and also from the
built-in class a Python user would catch (``ValueError`` or ``TypeError``), so existing ``except``
clauses keep working.
"""

__all__ = ["PrunekitError", "ConfigError", "PlanError", "PrunekitTypeError", "PruningRuntimeError"]


class PrunekitError(Exception):
    """Base class of every error raised by prunekit."""


class ConfigError(PrunekitError, ValueError):
    """An argument has a value outside what is accepted."""


class PlanError(ConfigError):
    """Parameter names, shapes and options do not resolve to a valid pruning plan."""


class PrunekitTypeError(PrunekitError, TypeError):
    """An argument has the wrong type, or an unknown keyword was passed."""


class PruningRuntimeError(PrunekitError, RuntimeError):
    """Pruning cannot go on with the current weights (for example a weight became NaN)."""
