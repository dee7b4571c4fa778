"""The shape world: a tiny world of flat shapes (``world``: scenes, captions, exact detectors), its
stories (``stories``: what a storyline asks for and the frames a perfect director writes), the
trainer of the embedded renderer in Stable Diffusion's format (``training``), and the shape
director's fine-tuning data and trainer (``director_data``, ``director_training``: the director's
own instruction text, made from the world's stories).

Imports ``direct2v.core``, ``direct2v.bundled`` and ``direct2v.director`` (which never imports it).
"""
