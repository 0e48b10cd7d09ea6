"""The benchmark suite's sections: one module each (see ``bench/suite.py``)."""
