"""Bounds for the strings and lists a ModelPipeline holds, as the Kubernetes API conventions
want one on every field: the API server estimates the cost of CEL rules from them, and a
client learns from the schema what will be accepted.

Names, versions and times a run produces are bounded and must fit (a longer one is a bug);
free text (a reason, a check's detail, a data problem) is cut to its bound instead, ending in
"…", so that a long message never makes a status write fail.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer

#: A Kubernetes object name, a run id.
MAX_NAME = 253
#: A version, a trigger, an engine's name.
MAX_SHORT = 64
#: An RFC 3339 time.
MAX_TIME = 64
#: The identity of a dataset (``sha256:…``, ``version:…``, ``etag:…``).
MAX_IDENTITY = 256
MAX_URI = 2048
#: A reason, a gate's decision.
MAX_TEXT = 4096
#: One check's detail, one problem of the data.
MAX_LINE = 1024


def _cut(limit: int) -> Any:
    def cut(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            return value[: limit - 1] + "…"
        return value

    return cut


Name = Annotated[str, Field(max_length=MAX_NAME)]
Short = Annotated[str, Field(max_length=MAX_SHORT)]
Time = Annotated[str, Field(max_length=MAX_TIME)]
Identity = Annotated[str, Field(max_length=MAX_IDENTITY)]
Uri = Annotated[str, Field(max_length=MAX_URI)]
Sha256 = Annotated[str, Field(max_length=64)]


def _cut_text(limit: int) -> Any:
    # Cut when validated and again when written: model_copy(update=...) does not validate.
    return (
        BeforeValidator(_cut(limit)),
        PlainSerializer(_cut(limit), return_type=str),
        Field(max_length=limit),
    )


#: Free text: a longer one is cut to the bound, not refused.
Text = Annotated[str, *_cut_text(MAX_TEXT)]
Line = Annotated[str, *_cut_text(MAX_LINE)]
#: A reason in a run's summary: the whole text is in the run's record.
MAX_BRIEF = 512
Brief = Annotated[str, *_cut_text(MAX_BRIEF)]
#: A value a user wrote (an annotation's), kept as far as its bound.
Value = Annotated[str, *_cut_text(MAX_IDENTITY)]
