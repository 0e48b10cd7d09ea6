"""Metrics and results shared by training (``scdl.frameworks``) and evaluation
(``scdl.evaluation``): the Dice metric (:mod:`~scdl.metrics.dice`) and the one results schema /
writer (:mod:`~scdl.metrics.results`).

Sits below both: it imports neither ``scdl.frameworks`` nor ``scdl.evaluation``. Import the
submodules: the package itself loads nothing (reading results needs no torch).
"""
