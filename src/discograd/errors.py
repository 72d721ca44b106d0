"""Errors that mean "the input is wrong", as opposed to a bug in discograd.

This module imports nothing, so every layer may use it. The command line
turns these (and only these) into one line on stderr and exit status 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["ConfigError", "RunFolderBusy", "RunFolderError", "RunFolderWarning"]


class ConfigError(ValueError):
    """A bad setting: an unknown estimator or dataset, a value out of range, an unusable device.

    A ``ValueError``, so code that catches ``ValueError`` for bad
    hyper-parameters keeps working.
    """


class RunFolderError(ConfigError):
    """A run folder that cannot be used as it is: unwritable, or a file in it is damaged.

    The message names the file and what to do about it.
    """


class RunFolderBusy(RunFolderError):
    """Another process holds the run folder's lock; the message names the folder and its pid."""


class RunFolderWarning(UserWarning):
    """A run folder was repaired: damaged records are recomputed, a stale checkpoint dropped."""
