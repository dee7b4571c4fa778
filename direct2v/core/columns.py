"""Parquet columns from pydantic models: one column per field, its type from the field's annotation.

The manifest's schema (``job.manifest.SCHEMA``) is ``arrow_schema(ManifestRow)``: the row model is
the one definition of its columns.
"""

from __future__ import annotations

from datetime import datetime
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel

#: A column of 32-bit integers (a plain ``int`` field is ``int64``): a pyarrow type in a field's
#: ``Annotated`` metadata is that column's type.
Int32 = Annotated[int, pa.int32()]

#: The column type of each Python type a field may have.
ARROW_TYPES: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    datetime: pa.timestamp("us", tz="UTC"),  # stored as UTC microseconds
}


def arrow_type(annotation: Any) -> pa.DataType:
    """The column type of a field annotation: the pyarrow type in its ``Annotated`` metadata if it
    has one, else ``ARROW_TYPES`` -- ``X | None`` as X, a ``Literal`` as its values' type, and
    ``list[X]`` as a list of X's type."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        declared = [item for item in annotation.__metadata__ if isinstance(item, pa.DataType)]
        return declared[-1] if declared else arrow_type(args[0])
    if origin in (Union, UnionType):
        kinds = [arg for arg in args if arg is not NoneType]
        if len(kinds) == 1:
            return arrow_type(kinds[0])
    elif origin is Literal:
        kinds = list({type(arg) for arg in args})
        if len(kinds) == 1:
            return arrow_type(kinds[0])
    elif origin is list:
        return pa.list_(arrow_type(args[0]))
    elif annotation in ARROW_TYPES:
        return ARROW_TYPES[annotation]
    raise TypeError(f"no Parquet column type for {annotation!r}: add the type to ARROW_TYPES "
                    "or annotate the field with one (Annotated[..., pa.<type>()])")


def arrow_schema(model: type[BaseModel]) -> pa.Schema:
    """The Parquet schema of ``model``: one column per field, in field order. A field the model
    requires is a non-null column; any other may hold nulls (a manifest written before the column
    existed lacks it, and ``row_from_record`` reads a null back as the field's default)."""
    columns = []
    for name, info in model.model_fields.items():
        declared = [item for item in info.metadata if isinstance(item, pa.DataType)]  # a top-level Annotated
        column_type = declared[-1] if declared else arrow_type(info.annotation)
        columns.append(pa.field(name, column_type, nullable=not info.is_required()))
    return pa.schema(columns)
