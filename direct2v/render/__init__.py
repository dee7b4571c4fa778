"""The render stage: a frame plan -> frames -> an MP4, with the paper's modified self-attention.

``pipeline`` (``DirecT2VPipeline``: the Text2Video-Zero latent schedule with per-frame prompts, SD
1.x/2.x; ``pipeline_xl``: the same on SDXL) is called with one frozen ``RenderCall`` (``call``:
everything a render decides, validated in one place); its steps live in ``latent_schedule``
(segments, motion), ``conditioning`` (what the UNet is conditioned on, per frame) and ``passes``
(one denoising pass); ``model_dir`` reads which architecture a local diffusers directory is, checks
and loads it, ``model_check`` reports on one without loading it. The attention processors of
``attention`` run the math of ``rvm`` and ``dsf`` (small pure functions) with their per-step state
in ``reference``; ``sampling`` names the samplers; ``cpu_kernels`` builds the optional C++ kernel of
``kernels/``; ``renderer`` loads a pipeline once per process; ``encode`` writes and reads back MP4s.

Imports ``direct2v.core`` and the plan contract of ``direct2v.director``.
"""
