"""What a finished run is published as: its gallery (``gallery``: contact sheets and index.html)
and training-ready exports (``export``: WebDataset shards, Hugging Face datasets).

Imports ``direct2v.core``, ``direct2v.render`` (to read videos) and ``direct2v.job`` (the manifest).
"""
