"""The REST API's bodies as pydantic models: the requests it parses and the responses it documents.

Request models forbid unknown fields and take no coercion for text (`"size": 720` is a 400 naming `size`).
Response models are for the OpenAPI document (FastAPI's `/openapi.json`, what schemathesis checks the answers
against); `convert.py` writes the same shapes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, StrictStr


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputReference(_Body):
    image_url: StrictStr | None = None
    file_id: StrictStr | None = None


class VideoRef(_Body):
    id: StrictStr


class LoraRef(_Body):
    """A LoRA adapter of the server's adapter directory at a scale (1: as trained)."""

    name: StrictStr
    scale: StrictFloat | StrictInt = 1.0


class CreateBody(_Body):
    prompt: StrictStr
    model: StrictStr | None = None
    seconds: StrictStr | StrictInt | StrictFloat | None = None
    size: StrictStr | None = None
    input_reference: InputReference | None = None
    cache: StrictStr | None = None  # Kino's extras
    two_stage: bool | None = None
    character_id: StrictStr | None = None  # a cameo (POST /v1/videos/characters) in the video
    loras: list[LoraRef] | None = None  # LoRA adapters (GET /v1/loras), each at most once


class RemixBody(_Body):
    prompt: StrictStr
    loras: list[LoraRef] | None = None  # None: the source video's adapters


class CharacterBody(_Body):
    name: StrictStr
    consent_statement: StrictStr = ""  # Kino's consent record (required: the words the person agrees to)
    consent: bool = False
    require_approval: bool = False


class EditBody(_Body):
    prompt: StrictStr
    video: VideoRef


# -- responses ------------------------------------------------------------------------------------------
class VideoError(BaseModel):
    code: str
    message: str


class LoraUsed(BaseModel):
    name: str
    scale: float


class Video(BaseModel):
    id: str
    object: Literal["video"]
    created_at: int
    completed_at: int | None
    expires_at: int | None
    model: str
    progress: int
    prompt: str | None
    remixed_from_video_id: str | None
    seconds: str
    size: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    error: VideoError | None
    generated_size: str
    size_fit: Literal["crop", "scale"] | None
    resumed_from_step: int | None
    loras: list[LoraUsed]


class VideoList(BaseModel):
    object: Literal["list"]
    data: list[Video]
    first_id: str | None
    last_id: str | None
    has_more: bool


class Lora(BaseModel):
    object: Literal["lora"]
    name: str  # what a request's loras[].name takes
    rank: int  # the largest, where its layers differ
    modules: int  # Linear layers of the transformer it changes


class LoraList(BaseModel):
    object: Literal["list"]
    data: list[Lora]


class VideoDeleted(BaseModel):
    id: str
    object: Literal["video.deleted"]
    deleted: bool


class Character(BaseModel):
    id: str
    object: Literal["character"]
    created_at: int
    name: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERRORS: dict[int | str, dict[str, Any]] = {"default": {"model": ErrorResponse, "description": "An error"}}


def request_body(*models: tuple[str, type[BaseModel]]) -> dict[str, Any]:
    """`openapi_extra` declaring a body the route reads itself, per content type (JSON, multipart); nested models
    are referenced from components (`register_schemas` puts them there)."""
    content = {media: {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}
               for media, model in models}
    for media in content.values():
        media["schema"].pop("$defs", None)
    return {"requestBody": {"required": True, "content": content}}


def register_schemas(openapi: dict[str, Any], *models: type[BaseModel]) -> dict[str, Any]:
    """Add the nested models of request bodies to the document's components."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas.setdefault(model.__name__, schema)
    return openapi
