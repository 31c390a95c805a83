"""Compare predicted and reference label maps: metrics, tables and an HTML report.

Only numpy is imported here; MONAI/torch and matplotlib load when a metric or plot is computed.
"""
from .evaluate import CaseResult, Evaluation, evaluate, match_cases
from .metrics import METRICS, binary_metrics, class_metrics, summarize
from .report import write_report

__all__ = ["METRICS", "CaseResult", "Evaluation", "binary_metrics", "class_metrics", "evaluate", "match_cases",
           "summarize", "write_report"]
