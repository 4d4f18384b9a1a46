"""The national sink report: totals with their full covariance, the inventory comparison,
machine-readable outputs (PARIS layout, CSV tables) and the HTML page.

Modules (nothing happens at import):

* :mod:`.totals` — region × period totals of any quantity as linear combinations of the run's
  base totals (``totals.nc``), with exact covariances; units and ranges;
* :mod:`.inventory` — the inventory table (CSV schema in the README) and its comparison;
* :mod:`.data` — :class:`~inversion.report.data.ReportData` and
  :func:`~inversion.report.data.load_report_data`, everything a report shows, read from a run
  directory;
* :mod:`.paris` — the PARIS Lagrangian inversion flux and concentration files;
* :mod:`.tables` — CSV tables of everything in the report;
* :mod:`.html`, :mod:`.figures` — the self-contained HTML page and its figures.
"""
