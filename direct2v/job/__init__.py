"""A job: one run directory taken from a prompt file (or plan files) to videos and a manifest.

``request`` (the one ``JobRequest`` every command and deployment passes, resolved to a ``Run``),
``rundir`` (the run directory and its job file), ``shards`` (bounded memory for any list length),
``plan_stage`` and ``planning`` (the director, in its own process: ``director_process``),
``render_stage`` and ``videos`` (one plan -> one MP4 and its row, and the one rule for which videos
need no work), ``cluster`` (the Dask workers a render stage may use, and those it lost),
``manifest`` (one Parquet row per prompt) and ``summary`` (what a run did). The Prefect flow of
``flows/generate.py`` composes them.

Imports ``direct2v.core``, ``direct2v.director`` and ``direct2v.render``; never Prefect.
"""
