"""inference: a trained network on whole volumes. The sliding window
(:mod:`~scdl.inference.sliding_window`, a leaf the frameworks' validation uses); a module rebuilt
from its checkpoint and run config (:mod:`~scdl.inference.checkpoint`, weight import in
:mod:`~scdl.inference.released`); device and precision (:mod:`~scdl.inference.runtime`); one
volume segmented (:mod:`~scdl.inference.segment`) and brought back to the scan's own grid and
NIfTI (:mod:`~scdl.inference.native_grid`); new scans segmented (:mod:`~scdl.inference.predict`,
``src/predict.py``)."""
