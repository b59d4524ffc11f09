"""When masks are recomputed and to what sparsity: the gradual schedule of Zhu & Gupta (2017).

"To prune, or not to prune: exploring the efficacy of pruning for model compression",
https://arxiv.org/abs/1710.01878. tfmot's ``PolynomialDecay`` uses the same polynomial.
"""

from dataclasses import dataclass

from prunekit.core import _validate
from prunekit.errors import ConfigError

__all__ = ["Schedule"]


@dataclass(frozen=True)
class Schedule:
    """Prune events and the sparsity each one aims at.

    Steps count from 0: step ``t`` is the update that follows ``t`` completed updates. Events fall at
    ``pretrain_step + k * frequency`` for ``k = 0 .. sparse_step // frequency``, plus a final one at
    ``pretrain_step + sparse_step``. At an event ``t`` the sparsity is
    ``s_f + (s_i - s_f) * (1 - (t - pretrain_step) / sparse_step) ** exponent``.

    Example:
        >>> s = Schedule(pretrain_step=10, sparse_step=20, frequency=8)
        >>> s.events()
        [10, 18, 26, 30]
        >>> s.sparsity_at(30, 0.0, 0.9)
        0.9
        >>> round(s.sparsity_at(18, 0.0, 0.9), 4)
        0.7056
    """

    pretrain_step: int = 0
    sparse_step: int = 0
    frequency: int = 100
    exponent: float = 3.0

    def __post_init__(self):
        object.__setattr__(self, "pretrain_step", _validate.step_count("pretrain_step", self.pretrain_step))
        object.__setattr__(self, "sparse_step", _validate.step_count("sparse_step", self.sparse_step))
        object.__setattr__(self, "frequency", _validate.frequency(self.frequency))
        exponent = self.exponent
        if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or not exponent > 0:
            raise ConfigError(f"exponent must be a number > 0; got {exponent!r}")
        object.__setattr__(self, "exponent", float(exponent))

    @property
    def last_event(self):
        """The step of the final prune event; masks stay fixed after it."""
        return self.pretrain_step + self.sparse_step

    def events(self):
        """All prune event steps, ascending."""
        steps = list(range(self.pretrain_step, self.last_event + 1, self.frequency))
        if steps[-1] != self.last_event:
            steps.append(self.last_event)
        return steps

    def is_event(self, step):
        """Whether masks are recomputed at ``step``."""
        if step < self.pretrain_step or step > self.last_event:
            return False
        return step == self.last_event or (step - self.pretrain_step) % self.frequency == 0

    def sparsity_at(self, step, initial, final):
        """The sparsity aimed at by an event at ``step``, ramping from ``initial`` to ``final``."""
        if self.sparse_step == 0 or step >= self.last_event:
            return float(final)
        progress = max(0.0, (step - self.pretrain_step) / self.sparse_step)
        return float(final + (initial - final) * (1.0 - progress) ** self.exponent)

    def get_config(self):
        return {"pretrain_step": self.pretrain_step, "sparse_step": self.sparse_step,
                "frequency": self.frequency, "exponent": self.exponent}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
