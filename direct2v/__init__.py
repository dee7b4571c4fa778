"""DirecT2V: an LLM director plans per-frame prompts; a diffusion renderer with rotational value
mapping turns them into temporally consistent videos. See README.md."""

__version__ = "0.1.0"
