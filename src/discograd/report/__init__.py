"""Reports: markdown with tables and embedded PNG plots (plots need the ``plot`` extra)."""

from discograd.report.markdown import (
    sbn_section,
    ssl_section,
    toy_section,
    vae_section,
    variance_section,
    write_report,
)

__all__ = [
    "sbn_section",
    "ssl_section",
    "toy_section",
    "vae_section",
    "variance_section",
    "write_report",
]
