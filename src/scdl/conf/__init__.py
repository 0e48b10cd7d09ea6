"""The Hydra configs of every command (``pkg://scdl.conf``); YAML only, no code."""
