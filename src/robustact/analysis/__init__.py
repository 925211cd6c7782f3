"""Activation analyses of the papers (channel magnitude/frequency, relevance, gates) as CSV + figures.

An analysis is registered with `register_analysis(kind)` and run by `robustact analyze RUN [RUN ...] --kind`.
"""

from robustact.analysis.registry import AnalysisOptions, list_analyses, register_analysis, run_analysis

__all__ = ["AnalysisOptions", "list_analyses", "register_analysis", "run_analysis"]
