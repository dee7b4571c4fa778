"""Measuring videos: the paper's metrics (``metrics``, pure functions), a finished run's evaluation
and QC (``evaluate``), the shape world's exact scores (``shapes``) and storylines (``storylines``: does
a plan, and its video, tell the story asked for), and the variants compared side by side (``compare``).

Imports ``direct2v.core``, ``director``, ``render``, ``job`` and ``shape_world``.
"""
