"""The shape world: a tiny world of flat shapes (``world``: scenes, captions, exact detectors), its
stories (``stories``: what a storyline asks for and the frames a perfect director writes), the
trainer of the embedded renderer in Stable Diffusion's format (``training``; its noise schedule in
``noise``; its decoder tuned on noisy latents in ``decoder_tuning``), and the grammar of the prompts the shape director is trained on (``story_prompts``).

Imports ``direct2v.core`` and ``direct2v.bundled``. The director imports it (the shape-world
templates write frames from its stories, and the shape director is trained on them in
``direct2v.director.shape_data``); it never imports the director.
"""
