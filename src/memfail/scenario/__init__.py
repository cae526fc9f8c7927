"""Scenario files: load and validate them (``loader``), run them (``runner``), check their
expectations (``expect``). The format is documented in docs/scenario-format.md.
"""

from .errors import ScenarioError
from .loader import Scenario, Step, library, load_scenario, load_scenario_text, resolve
from .runner import RunResult, run_scenario

__all__ = [
    "RunResult",
    "Scenario",
    "ScenarioError",
    "Step",
    "library",
    "load_scenario",
    "load_scenario_text",
    "resolve",
    "run_scenario",
]
