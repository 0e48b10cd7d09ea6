"""evaluation: scoring only. A checkpoint on its cases (:mod:`~scdl.evaluation.evaluate`), a folder
of label maps (:mod:`~scdl.evaluation.folder`), the protocols and distances
(:mod:`~scdl.evaluation.protocols`). Inference lives in :mod:`scdl.inference`, tables and plots
in :mod:`scdl.reporting`; importing this package loads neither torch nor the inference stack."""
