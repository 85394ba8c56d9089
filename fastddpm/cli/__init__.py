"""The command line: `fastddpm sample | export | fit-timesteps | bench | train`.

One module per command (``sample``, ``export``, ``fit``, ``bench``, ``train``: each ``register``s its
subparser and runs it), the solver flags sample and export share (``solver``), what every command uses
(``common``), and the parser, ``main`` and the entry point ``run`` (``app``)."""

from .app import build_parser, main, run

__all__ = ["build_parser", "main", "run"]
