"""The director stage: prompt files -> validated frame plans, through a local LLM (vLLM).

``prompt_files`` reads prompt files into the records of ``prompts``; ``plan`` is the contract the renderer receives
(``FramePlan``, and the one gate every plan passes); ``instructions`` and ``quality`` are the
templates, schemas and rules as pure functions. ``director`` (``Director``) runs them: each
template's way of asking is a strategy (``strategy``, with ``v1``, ``v2`` and the shape world's
``shapes``), sent through the vLLM engine (``engine``); plans are kept in ``cache`` and counted in
``report``. ``shape_data`` and ``shape_training`` train the shape director.

Imports ``direct2v.core`` and ``direct2v.shape_world`` (the world's stories, for its templates and
training data).
"""
