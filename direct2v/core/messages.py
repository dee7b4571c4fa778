"""Validation errors in the project's own words: one phrase per kind of pydantic error.

Prompt files and settings are validated with pydantic, whose messages ("Input should be greater
than or equal to 2", "String should have at least 1 character") describe the validator, not the
user's mistake. :func:`problem` turns one pydantic error item into what is wrong with the value;
the callers add where (file:line, or the settings key) and how to fix it.
"""

from __future__ import annotations

from typing import Any


def problem(item: dict[str, Any]) -> str:
    """What is wrong, for one item of ``ValidationError.errors()``: e.g. "must be at least 2"."""
    kind, context = item["type"], item.get("ctx") or {}
    if kind in ("greater_than_equal", "greater_than"):
        return f"must be {'at least' if kind == 'greater_than_equal' else 'more than'} {context.get('ge', context.get('gt'))}"
    if kind in ("less_than_equal", "less_than"):
        return f"must be {'at most' if kind == 'less_than_equal' else 'less than'} {context.get('le', context.get('lt'))}"
    if kind == "string_too_short":
        return "is empty" if context.get("min_length") == 1 else f"is shorter than {context['min_length']} characters"
    if kind == "string_too_long":
        return f"is longer than {context['max_length']} characters"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "is not a whole number"
    if kind in ("float_parsing", "float_type"):
        return "is not a number"
    if kind == "finite_number":
        return "is not a finite number"
    if kind == "string_unicode":  # a JSON escape such as "\ud800" with no partner: no file can hold it
        return "holds a lone surrogate (a \\ud800-\\udfff escape), which is not text; remove it"
    if kind in ("bool_parsing", "bool_type"):
        return "is not true or false"
    if kind == "string_type":
        return "must be text"
    if kind in ("literal_error", "enum"):
        return f"must be one of {context.get('expected', 'the listed values')}"
    if kind == "missing":
        return "is missing"
    if kind == "extra_forbidden":
        return "is not a known key"
    if kind == "value_error":
        return str(item["msg"]).removeprefix("Value error, ")
    return str(item["msg"])  # a kind this project never produces on its own
