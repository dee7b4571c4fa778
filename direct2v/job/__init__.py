"""A job: one run directory taken from a prompt file (or plan files) to videos and a manifest.

``rundir`` (the run directory and its job file), ``shards`` (bounded memory for any list length),
``planning`` (the director in its own process), ``videos`` (one plan -> one MP4 and its row, and the
one rule for which videos need no work), ``manifest`` (one Parquet row per prompt), and ``stages``
(the steps the Prefect flow of ``flows/generate.py`` composes).

Imports ``direct2v.core``, ``direct2v.director`` and ``direct2v.render``; never Prefect.
"""
