"""The shape world: a tiny world of flat shapes (``world``: scenes, captions, exact detectors) and
the trainer of the embedded renderer in Stable Diffusion's format (``training``).

Imports ``direct2v.core`` and ``direct2v.bundled``.
"""
