"""Typed errors of textgym.

They follow :mod:`gymnasium.error`: a small hierarchy whose messages show the
value that was received and the values that are allowed.  Every class derives
from :class:`TextGymError` *and* from the built-in exception a user would
catch without knowing textgym (``ValueError``, ``TypeError`` ...), so
``except ValueError`` keeps working.
"""

from __future__ import annotations

from gymnasium import error as gym_error


class TextGymError(Exception):
    """Base class of every error raised on purpose by textgym."""


class ConfigError(TextGymError, ValueError):
    """An argument or configuration value is not allowed."""


class DataError(TextGymError, ValueError):
    """A data file or dataset is malformed; the message names file, line and field."""


class ModelError(TextGymError, ValueError):
    """A model alias, id or path cannot be resolved or is incompatible."""


class InvalidAction(TextGymError, gym_error.InvalidAction, ValueError):
    """An action is out of range or of the wrong type."""


class ResetNeeded(TextGymError, gym_error.ResetNeeded):
    """``step`` was called before ``reset`` or after the episode ended."""


class DependencyNotInstalled(TextGymError, gym_error.DependencyNotInstalled, ImportError):
    """An optional dependency is missing; the message gives the pip command."""


class RewardError(TextGymError, ValueError):
    """A reward function returned something other than finite scores of the right shape."""
