"""Human-readable reports: matplotlib figures and a self-contained HTML page (no external files)."""

from dinotune.report.html import Report

__all__ = ["Report"]
