"""The command-line entry points: one module per command, each a Hydra app over the package's
configs (``pkg://scdl.conf``) with a ``command()`` that ``[project.scripts]`` installs as
``scdl-<name>`` and ``src/<name>.py`` calls in a checkout. The top layer: nothing imports it."""
