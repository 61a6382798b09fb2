"""Scaling-law analysis of a study's results table: fits, plots, comparisons, report (no torch).

Entry points: ``analysis.fit.fit``, ``analysis.plots.plot_scaling``, ``analysis.compare.compare_recipes``,
``analysis.report.write_report``, and ``python -m analysis report|compare``.
"""
