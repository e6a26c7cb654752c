"""Pydantic schemas of the API: requests and responses, named for what they carry."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# Requests -------------------------------------------------------------------------------------------


class ImageRef(BaseModel):
    """One image in a JSON request: exactly one of `base64` (optionally a data: URL), `url` (only when the
    server allows URLs) or `item` (a workspace item id); `text` for bundles that also read text."""

    model_config = ConfigDict(extra="forbid")
    base64: str | None = None
    url: str | None = Field(None, max_length=2048)
    item: str | None = Field(None, max_length=1024)
    text: str | None = Field(None, max_length=100_000)
    name: str | None = Field(None, max_length=256, description="A label echoed back in the result.")

    @model_validator(mode="after")
    def _one_source(self) -> ImageRef:
        given = [k for k in ("base64", "url", "item") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of base64, url or item for each image")
        return self


class ImagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[ImageRef] = Field(..., min_length=1)


class DescribeItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] = Field(..., min_length=1, max_length=100)
    top_k: int = Field(10, ge=1, le=100)


class EditWhere(BaseModel):
    """Items matching the list's filters (as `GET /v1/items`; at least one)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    label: str = Field(None, min_length=1, max_length=512)
    collection: str = Field(None, min_length=1, max_length=512)
    tag: str = Field(None, min_length=1, max_length=512)
    q: str = Field(None, min_length=1, max_length=512)


class EditSearch(BaseModel):
    """The top `k` results of a text search."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(..., min_length=1, max_length=1000)
    k: int = Field(50, ge=1, le=1000)
    model: str | None = Field(None, max_length=120)


class EditCluster(BaseModel):
    """Every item of one cluster of a cluster run (default: the newest)."""

    model_config = ConfigDict(extra="forbid")
    cluster: int = Field(..., ge=-1)
    run: str | None = Field(None, min_length=1, max_length=120)


Tag = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"\S")]


class EditChanges(BaseModel):
    """What to change (at least one field). Absent leaves a field alone; `label: null` sets no label and
    `duplicate_of: null` clears a duplicate mark (JSON merge-patch style); `revert` puts label / tags back
    to the source's values."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    label: str | None = Field(None, min_length=1, max_length=512, pattern=r"\S")
    tags: list[Tag] = Field(None, max_length=500, description="The whole tag list.")
    add_tags: list[Tag] = Field(None, max_length=500)
    remove_tags: list[Tag] = Field(None, max_length=500)
    excluded: bool = Field(None, description="Leave the item out of every stage (true), or bring it back.")
    duplicate_of: str | None = Field(None, min_length=1, max_length=1024, description="The kept item; null: "
                                     "not a duplicate.")
    revert: list[Literal["label", "tags"]] = Field(None, min_length=1, max_length=2)

    def given(self) -> dict[str, Any]:
        """The fields the request named, nulls included (a null label is an edit, an absent one is not)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


class EditBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    changes: EditChanges
    why: str = Field("", max_length=500, description="Recorded in the edit log (e.g. the review queue).")
    versions: dict[str, int] | None = Field(None, description="item id -> the version the caller read; a stale "
                                            "one gets 409 and nothing is written. The If-Match header instead "
                                            "applies one version to every selected item.")


class EditByIds(EditBase):
    ids: list[Annotated[str, StringConstraints(min_length=1, max_length=1024)]] = Field(..., min_length=1)


class EditByFilter(EditBase):
    where: EditWhere


class EditBySearch(EditBase):
    search: EditSearch


class EditByCluster(EditBase):
    cluster: EditCluster


# An edit selects its items with exactly one of ids, where, search or cluster.
EditRequest = EditByIds | EditByFilter | EditBySearch | EditByCluster


class ReviewDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    proposal_id: str = Field(..., min_length=1, max_length=64)
    decision: Literal["accept", "reject", "skip"]


class UndoBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch: str = Field(..., min_length=1, max_length=80)
    why: str = Field("", max_length=500)


class UndoEdits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    edit_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=80)]] = Field(
        ..., min_length=1, max_length=10_000)
    why: str = Field("", max_length=500)


UndoRequest = UndoBatch | UndoEdits


# Errors and status ------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: str
    version: str


class Ready(BaseModel):
    ready: bool
    status: str = Field(description="'ready', 'loading', or why the service is not ready")
    workspace: str
    items: int
    models: dict[str, str] = Field(description="bundle name -> 'loaded' or the reason it is not")
    search: str
    describe: str


# Colours ------------------------------------------------------------------------------------------------


class ColourName(BaseModel):
    name: str
    share: float


class PaletteColour(BaseModel):
    hex: str
    rgb: tuple[int, int, int]
    share: float
    basic: str
    css: str
    delta_e: float


class ColourResult(BaseModel):
    image: str
    colour: str | None = Field(description="The object's dominant colour name (largest total share of the "
                               "object; the backdrop is named apart, in `background`).")
    names: list[ColourName] = Field(description="The object's colour names, with their share of the object.")
    palette: list[PaletteColour] = Field(description="The k-colour palette of the object's pixels.")
    background: ColourName | None = Field(None, description="The backdrop's name and its share of the image; "
                                          "null when transparent or when the whole image was named.")
    phrase: str = Field("", description='The colours in words, e.g. "black on white".')
    method: str = Field("border", description="How object and backdrop were separated: alpha (transparency), "
                        "border (the backdrop learnt from the image border) or whole_image (no backdrop).")
    note: str | None = Field(None, description="Why the whole image was named, when it was.")


class ColoursResponse(BaseModel):
    vocabulary: str
    k: int
    results: list[ColourResult]


# Predictions ------------------------------------------------------------------------------------------


class Prediction(BaseModel):
    image: str
    prediction: str | None = None
    tags: list[str] | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    open_set: dict[str, Any] | None = Field(None, description="An open-set model's decision: accepted, the best "
                                            "class, its probability and novelty distance, and that class's "
                                            "thresholds.")


class PredictResponse(BaseModel):
    bundle: str
    task: str
    target: str
    results: list[Prediction]


# Items ------------------------------------------------------------------------------------------------


class ItemSummary(BaseModel):
    id: str
    collection: str | None = None
    source: str | None = None
    label: str | None = None
    tags: list[str] = Field(default_factory=list)
    text: str = ""
    colour: str | None = None
    cluster: int | None = None
    width: int | None = None
    height: int | None = None
    image_url: str
    thumbnail_url: str
    version: int = Field(0, description="Edits applied to the item: send it back in If-Match (as \"v<version>\") "
                         "or `versions` to edit only what you read.")
    curated: list[str] = Field(default_factory=list, description="Fields a curator set (label, tags, excluded, "
                               "duplicate_of).")
    excluded: bool = False
    duplicate_of: str | None = None


class ItemPage(BaseModel):
    total: int
    offset: int
    limit: int
    cluster_run: str | None = None
    items: list[ItemSummary]


class ItemDetail(ItemSummary):
    source_label: str | None = Field(None, description="The source's label (`label` is the curated one).")
    source_tags: list[str] = Field(default_factory=list, description="The source's tags.")
    captions: list[str] = Field(default_factory=list)
    attributes: list[Any] = Field(default_factory=list)
    split: str | None = None
    image_format: str | None = None
    image_mode: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)
    palette: list[PaletteColour] = Field(default_factory=list, description="The k-colour palette of the object "
                                         "(`colour_source` object_palette) or of the whole image (palette).")
    colours: list[ColourName] = Field(default_factory=list, description="Colour names with their share of the "
                                      "object (object_palette: as POST /v1/colours names the file) or of the image.")
    colour_source: str | None = Field(None, description="The cached feature the colours come from: object_palette "
                                      "(the object, backdrop apart), palette (the whole image, backdrop included: "
                                      "object_palette not computed for this item), or null (neither).")
    background: ColourName | None = Field(None, description="The backdrop's name and share of the image "
                                          "(object_palette only; null when transparent or none).")
    phrase: str | None = Field(None, description='The colours in words, e.g. "black on white" (object_palette only).')
    colour_method: str | None = Field(None, description="How object and backdrop were separated: alpha, border or "
                                      "whole_image (object_palette only).")
    clusters: dict[str, int] = Field(default_factory=dict, description="cluster run -> cluster of this item")


class FeatureInfo(BaseModel):
    name: str
    key: str
    dim: int
    values: list[float] | None = None


class ItemFeatures(BaseModel):
    id: str
    features: list[FeatureInfo]


class ClusterFacet(BaseModel):
    cluster: int
    name: str
    size: int


class Facets(BaseModel):
    total: int
    labels: dict[str, int]
    tags: dict[str, int]
    colours: dict[str, int]
    collections: dict[str, int]
    cluster_run: str | None = None
    clusters: list[ClusterFacet] = Field(default_factory=list)


# Models and clusters ------------------------------------------------------------------------------------


class ModelInfo(BaseModel):
    name: str
    status: str = Field(description="'loaded', 'not loaded' or 'error'")
    error: str | None = None
    loaded_at: str | None = None
    task: str | None = None
    target: str | None = None
    model: str | None = None
    labels: list[str] = Field(default_factory=list)
    features: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    created: str | None = None


class ModelList(BaseModel):
    models: list[ModelInfo]


class ClusterRunSummary(BaseModel):
    run: str
    method: str | None = None
    k: int | None = None
    items: int | None = None
    features: list[str] = Field(default_factory=list)
    scores: dict[str, Any] = Field(default_factory=dict)
    created: str


class ClusterRunList(BaseModel):
    runs: list[ClusterRunSummary]


class ClusterAssignments(BaseModel):
    run: str
    total: int
    offset: int
    limit: int
    assignments: list[dict[str, Any]]


# Search and describe ----------------------------------------------------------------------------------


class SearchHit(BaseModel):
    id: str
    score: float
    label: str | None = None
    collection: str | None = None
    text: str | None = None
    image_url: str
    thumbnail_url: str
    matched: list[str] = Field(default_factory=list, description="Tags (trait=value) the text query named that "
                                                                  "this item has (hybrid and lexical modes).")
    predicted: list[str] = Field(default_factory=list, description="Those of `matched` known only from the tags "
                                                                    "model's predictions (the item has no tags).")
    via: list[str] = Field(default_factory=list, description="The parts that ranked it: traits, lexical, joint.")


class SearchResponse(BaseModel):
    query: str
    results: list[SearchHit]
    mode: str | None = Field(None, description="Text search mode used: hybrid, joint or lexical.")
    notes: list[str] = Field(default_factory=list)


class ImageSearchResult(BaseModel):
    image: str
    results: list[SearchHit]


class ImageSearchResponse(BaseModel):
    results: list[ImageSearchResult]


class Keyword(BaseModel):
    keyword: str
    score: float
    source: str | None = None


class DescribedColour(BaseModel):
    name: str
    share: float
    hex: str | None = None


class Description(BaseModel):
    id: str | None = None
    image: str | None = None
    keywords: list[Keyword] = Field(default_factory=list)
    sentence: str = ""
    colours: list[DescribedColour] = Field(default_factory=list)
    error: str | None = Field(None, description="Why this one could not be described (the others were).")


class DescribeResponse(BaseModel):
    results: list[Description]


# The request body of every endpoint that takes images, for the OpenAPI document: those endpoints read
# the body themselves (multipart or JSON), so FastAPI cannot infer it.


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its $defs inlined (the OpenAPI document has no room for them here)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(dict(defs[ref.rsplit("/", 1)[1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


IMAGES_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "Images as a multipart upload (one or more `files`, optional `text`: one for all or one "
                       "per image, optional `item` ids) or as JSON. The type of each image is read from its "
                       "bytes; size, pixel count and the number of images are limited.",
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["files"],
                "properties": {"files": {"type": "array", "minItems": 1,
                                         "items": {"type": "string", "format": "binary"}},
                               "text": {"type": "string"}}}},
            "application/json": {"schema": _inline(ImagesRequest.model_json_schema())},
        },
    },
}


# Curation -----------------------------------------------------------------------------------------------
class Edit(BaseModel):
    edit_id: str
    batch: str
    at: str
    who: str
    why: str
    item: str
    field: str
    before: Any = None
    after: Any = None
    version: int
    undoes: str | None = None


class EditResponse(BaseModel):
    batch: str | None = Field(description="The edit batch (undo it with POST /v1/edits/undo); null when "
                              "nothing changed.")
    changed: int = Field(description="Items changed.")
    unchanged: int = Field(description="Selected items that already had these values.")
    edits: list[Edit]
    versions: dict[str, int] = Field(description="item id -> its version now (the ETag of GET /v1/item).")


class EditLog(BaseModel):
    edits: list[Edit]
    total: int = Field(description="Edits in the whole log.")
