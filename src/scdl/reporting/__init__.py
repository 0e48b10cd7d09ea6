"""reporting: what is made of finished runs. Run records and statistics
(:mod:`~scdl.reporting.statistics`), the summary and the one paper table
(:mod:`~scdl.reporting.summary`, :mod:`~scdl.reporting.paper_table`), committed results
(:mod:`~scdl.reporting.archive`), figures and notebooks' helpers (:mod:`~scdl.reporting.figures`),
the run dashboard, prior diagnostics, and the W&B run of an evaluation."""
