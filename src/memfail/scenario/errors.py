"""The error type for bad scenario input: it knows the file, line and field at fault.

Rendered as ``FILE:LINE: FIELD: what is wrong; how to fix`` (one line) by the command line.
It is the shared ``memfail.inputs.InputError`` of every input file.
"""

from __future__ import annotations

from memfail.inputs import InputError, did_you_mean, one_of

__all__ = ["FeatureMissing", "ScenarioError", "did_you_mean", "one_of"]


class ScenarioError(InputError):
    """Bad input in a scenario file (or a command-line choice that names something unknown)."""


class FeatureMissing(ScenarioError):
    """The scenario uses something its kernel profile does not have (the model's
    ProfileMissing: merged in a later kernel). Still bad input for `memfail run`; `memfail
    compare --profile P` shows such a cell as not run instead of failing."""
