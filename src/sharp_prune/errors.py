"""The library's own exception types.

They subclass the built-in types users already catch (``ValueError``, ``TypeError``), so
``except ValueError`` keeps working, while ``except SharpPruneError`` catches only ours.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(names: Iterable[str], known: Iterable[str]) -> str:
    """ "'a' (did you mean 'b'?), 'c'": unknown names, each with the nearest known one when there is one."""
    known = list(known)
    hints = []
    for name in names:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(hints)


class SharpPruneError(Exception):
    """Base class of every error raised by sharp-prune."""


class ConfigError(SharpPruneError, ValueError):
    """A `PruneConfig` field has an invalid value, or does not fit the model it is applied to."""


class ConfigTypeError(SharpPruneError, TypeError):
    """A `PruneConfig` field (or an argument of `apply`) has the wrong type."""


class UnsupportedModelError(SharpPruneError, ValueError):
    """The model is not one sharp-prune knows how to prune."""


class InputError(SharpPruneError, ValueError):
    """The inputs of a forward call cannot be pruned as given (checked before any layer runs)."""


class VideoError(InputError):
    """A video file cannot be used as given: missing, unreadable, without a video stream or frames, or holding
    fewer frames than asked (checked before any decoding or model work)."""


class ModelLoadError(SharpPruneError, ValueError):
    """A model or its processor cannot be loaded from the given name or path."""


class AlreadyAppliedError(SharpPruneError, RuntimeError):
    """`apply` was called on a model that already carries an active sharp-prune handle."""


class ProtocolError(SharpPruneError, RuntimeError):
    """transformers called the model in a way sharp-prune does not recognise (a release it was not tested with).

    Raised from the forward, before anything is returned, so that unpruned output never passes for pruned; the
    message names the installed transformers release and the tested range.
    """
