"""What request and response bodies of every area share (pydantic); each route module defines its own bodies,
and the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Item = TypeVar("Item")

Role = Literal["owner", "staff", "viewer"]
# Deliberately loose (the database checks one '@' and no spaces): deliverability is not ours to judge.
Email = Field(min_length=3, max_length=254, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$")


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class Page(BaseModel, Generic[Item]):
    items: list[Item]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")
