"""The ``direct2v`` command line.

Imports any part of the library; runs the Prefect flow by its entrypoint (as a Prefect worker does),
so nothing in ``direct2v`` imports ``flows``.
"""

from direct2v.cli.app import main

__all__ = ["main"]
