"""Reports: markdown with tables and embedded PNG plots (plots need the ``plot`` extra).

Each task owns its section, a module of its own with a ``section(run, results,
config)`` function returning a :class:`~discograd.report.markdown.Section`
(its markdown and its summary lines): :mod:`~discograd.report.toy`,
:mod:`~discograd.report.variance`, :mod:`~discograd.report.vae`,
:mod:`~discograd.report.sbn`, :mod:`~discograd.report.ssl`,
:mod:`~discograd.report.gates`. They share
:mod:`~discograd.report.markdown` (tables of mean ± s.e., comparisons made only
beyond the standard error, the file), :mod:`~discograd.report.timing`
(medians of repeated timings) and :mod:`~discograd.report.curves` (curves over
seeds); :mod:`~discograd.report.plots` draws them.
"""

from discograd.report.bench import simplex_section
from discograd.report.gates import section as gates_section
from discograd.report.markdown import Section, write_report
from discograd.report.sbn import section as sbn_section
from discograd.report.ssl import section as ssl_section
from discograd.report.topk import section as topk_section
from discograd.report.toy import section as toy_section
from discograd.report.vae import section as vae_section
from discograd.report.variance import section as variance_section

__all__ = [
    "Section",
    "gates_section",
    "sbn_section",
    "simplex_section",
    "ssl_section",
    "topk_section",
    "toy_section",
    "vae_section",
    "variance_section",
    "write_report",
]
