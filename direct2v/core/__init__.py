"""The foundation every stage shares: settings (``config``), the step schedule they resolve to
(``schedule``), durable writes and model ids (``files``), the process environment
(``environment``), validation messages in our words (``messages``), Parquet columns from pydantic
models (``columns``), the resumable loop both trainers share (``training``) and the error base
(``errors``).

Imports nothing of DirecT2V: everything else may import it.
"""
