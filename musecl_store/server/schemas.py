"""The HTTP API's request and response bodies (pydantic), as the OpenAPI document shows them.

The search filters are made from :data:`musecl_store.search.filters.FILTER_FIELDS`: as a
JSON body's fields (:class:`Filters`, coordinates as lists of numbers) and as the GET
search's query parameters (:class:`FilterQuery`, coordinates as ``"a,b,c"`` text).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, create_model

from musecl_store.search.filters import FILTER_FIELDS, FilterField
from musecl_store.store.tables import EMBEDDING_KINDS

MAX_K = 1000
MAX_IDS = 10_000
MAX_VECTOR = 4096
MAX_INT32 = 2**31 - 1  # a model version is an INTEGER column
MAX_COORDINATES_TEXT = 200  # "a,b,c" text of a filter in a query string
MAX_POLYGON = {"query": 20_000, "body": 100_000}  # characters of a filter polygon

if TYPE_CHECKING:  # mypy wants literal values in Literal[...]; the tuple is the one list
    Kind = str
else:
    Kind = Literal[EMBEDDING_KINDS]


def _filter_field(field: FilterField, where: Literal["query", "body"]) -> tuple[Any, Any]:
    """One filter as a pydantic field: coordinates as text in a query string, as a list of
    as many numbers as the filter names in a JSON body."""
    if field.takes == "flag":
        return bool, Field(False, description=field.help)
    if field.takes == "polygon":
        return str | None, Field(None, max_length=MAX_POLYGON[where], description=field.help)
    names = field.metavar or ""
    if where == "query":
        shown = f"{names.lower()}: {field.help}"
        return str | None, Field(None, max_length=MAX_COORDINATES_TEXT, description=shown)
    n = len(names.split(","))
    shown = f"[{names.lower().replace(',', ', ')}]: {field.help}"
    return list[float] | None, Field(None, min_length=n, max_length=n, description=shown)


def _filters_model(name: str, where: Literal["query", "body"], doc: str) -> type[BaseModel]:
    fields: dict[str, Any] = {f.name: _filter_field(f, where) for f in FILTER_FIELDS}
    return create_model(name, __doc__=doc, **fields)


# mypy cannot see fields made at run time; the routes read them with model_dump().
if TYPE_CHECKING:
    Filters = BaseModel
    FilterQuery = BaseModel
else:
    Filters = _filters_model(
        "Filters", "body", "Which regions may be answers (all given conditions hold)."
    )
    FilterQuery = _filters_model(
        "FilterQuery", "query", "The filters as query parameters (all given conditions hold)."
    )


class ErrorOut(BaseModel):
    error: str = Field(description="What is wrong, in words.")
    parameter: str | None = Field(None, description="The parameter at fault, when one is.")


class CityOut(BaseModel):
    city: str
    regions: int
    revision: int
    crs: str
    h3_resolution: int | None = None
    source: str | None = None
    updated_at: str | None = None


class LayersOut(BaseModel):
    indicators: list[str]
    predictions: list[dict[str, Any]]


class HitOut(BaseModel):
    rank: int
    region_id: str
    city: str
    score: float = Field(description="Cosine of the two regions' embeddings (1 = same).")
    percentile: float | None = Field(
        None, description="Share (%) of the other candidate regions less similar to the query."
    )
    centroid: list[float] = Field(description="[lon, lat]")
    geometry: dict[str, Any] | None = None
    attention: dict[str, float] | None = Field(
        None, description="The region's fusion attention per modality: why it is like it is."
    )


class SimilarOut(BaseModel):
    city: str
    query: dict[str, Any]
    kind: str
    hits: list[HitOut]


class SearchParams(Filters):
    """The filters, k, the embedding and what each hit includes."""

    k: int = Field(10, ge=1, le=MAX_K)
    kind: Kind = "fused"
    model_version: int | None = Field(None, ge=1, le=MAX_INT32)
    geometry: bool = False
    attention: bool = False


class VectorQuery(SearchParams):
    vector: list[float] = Field(min_length=1, max_length=MAX_VECTOR)


class BatchQuery(SearchParams):
    """Many queries of one kind: region ids, lon/lat points or vectors (exactly one)."""

    regions: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None, max_length=MAX_IDS, description="Region ids of the city."
    )
    points: list[list[float]] | None = Field(
        None, max_length=MAX_IDS, description="[[lon, lat], ...]: the region containing each."
    )
    vectors: list[Annotated[list[float], Field(max_length=MAX_VECTOR)]] | None = Field(
        None, max_length=MAX_IDS, description="Vectors of the embeddings' dimension."
    )


class AnswerOut(BaseModel):
    query: str | int = Field(description="The region id, 'lon,lat', or the vector's index.")
    hits: list[HitOut]
    error: str | None = Field(
        None,
        description="Why this query has no answer (an unknown region, a point in no "
        "region, a bad vector); the other queries are answered.",
    )


class SimilarBatchOut(BaseModel):
    city: str
    kind: str
    answers: list[AnswerOut] = Field(description="One per query, in the order given.")


class FeaturesQuery(BaseModel):
    ids: list[str] | None = Field(None, max_length=MAX_IDS)
    points: list[list[float]] | None = Field(
        None, max_length=MAX_IDS, description="[[lon, lat], ...]"
    )
    kind: Kind = "fused"
    model_version: int | None = Field(None, ge=1, le=MAX_INT32)


class FeaturesOut(BaseModel):
    city: str
    kind: str
    dim: int
    rows: list[dict[str, Any]] = Field(
        description="{region_id, vector} per id or point (+ lon, lat for points); a point "
        "in no region has region_id and vector null."
    )


class IngestIn(BaseModel):
    path: str = Field(min_length=1, max_length=4096, description="A bundle folder on the server.")
    check: bool = False


class ReembedIn(BaseModel):
    regions: list[str] | None = Field(None, max_length=MAX_IDS)
    since: int | None = Field(None, ge=0, le=MAX_INT32)
    all_regions: bool = False
    model_version: int | None = Field(None, ge=1, le=MAX_INT32)
