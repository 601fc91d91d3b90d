"""Named errors of the loop a user can hit (all are ``ThresherError``: one line, exit code 1)."""

from thresher.errors import ThresherError


class LoopError(ThresherError):
    """Base class of the loop's user-facing errors."""


class StrategyError(LoopError):
    """A query strategy cannot run on what it was given."""


class UnknownStrategyError(StrategyError):
    """No strategy is registered under the requested name."""


class InvalidPredictionsError(StrategyError):
    """The probability matrix is malformed (not n×k, negative, rows not summing to 1, NaN)."""


class EmptyPoolError(StrategyError):
    """There is nothing left to select from."""


class MissingEmbeddingsError(StrategyError):
    """A diversity step was asked for but no embeddings were given."""


class LearnerError(LoopError):
    """A learner cannot be built or trained (unknown name, no labels, one class only)."""


class SimulationError(LoopError):
    """The simulation cannot run on this data (too few labelled rows, one class, bad sizes)."""


class RoundStateError(LoopError):
    """The round folder is inconsistent with the steps asked for, or another run holds it."""
