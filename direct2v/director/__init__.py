"""The director stage: prompt files -> validated frame plans, through a local LLM (vLLM).

``prompts`` reads prompt files into records; ``plan`` is the contract the renderer receives
(``FramePlan``, and the one gate every plan passes); ``instructions`` and ``quality`` are the
templates, schemas and rules as pure functions; ``director`` runs them on the vLLM engine.

Imports only ``direct2v.core``.
"""
