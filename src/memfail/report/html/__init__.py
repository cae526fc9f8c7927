"""``memfail report``: one self-contained HTML page answering the 2025-07-24 call's questions
from the evidence of compare, check, fleet, kernel-users, profiles, conform and search."""

from memfail.report.html.collect import Settings, collect
from memfail.report.html.page import render

__all__ = ["Settings", "collect", "render"]
