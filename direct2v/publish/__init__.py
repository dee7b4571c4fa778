"""What a finished run is published as: its gallery (``gallery``: contact sheets and index.html)
and training-ready exports (``export``: WebDataset shards, Hugging Face datasets).

Imports ``direct2v.core``, ``direct2v.render`` (to read videos), ``direct2v.job`` (the manifest), and
``direct2v.evaluation`` with ``direct2v.shape_world`` (a known storyline's checks, shown in the gallery).
"""
