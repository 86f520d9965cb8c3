import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Visibility(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VISIBILITY_UNSPECIFIED: _ClassVar[Visibility]
    VISIBILITY_PRIVATE: _ClassVar[Visibility]
    VISIBILITY_PUBLIC: _ClassVar[Visibility]

class Review(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVIEW_UNSPECIFIED: _ClassVar[Review]
    REVIEW_NONE: _ClassVar[Review]
    REVIEW_PENDING: _ClassVar[Review]
    REVIEW_APPROVED: _ClassVar[Review]

class StepCache(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_CACHE_UNSPECIFIED: _ClassVar[StepCache]
    STEP_CACHE_OFF: _ClassVar[StepCache]
    STEP_CACHE_BALANCED: _ClassVar[StepCache]
    STEP_CACHE_FAST: _ClassVar[StepCache]

class VideoStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VIDEO_STATUS_UNSPECIFIED: _ClassVar[VideoStatus]
    VIDEO_STATUS_QUEUED: _ClassVar[VideoStatus]
    VIDEO_STATUS_IN_PROGRESS: _ClassVar[VideoStatus]
    VIDEO_STATUS_COMPLETED: _ClassVar[VideoStatus]
    VIDEO_STATUS_FAILED: _ClassVar[VideoStatus]
    VIDEO_STATUS_CANCELLED: _ClassVar[VideoStatus]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_QUEUED: _ClassVar[Stage]
    STAGE_ENCODING: _ClassVar[Stage]
    STAGE_DENOISING: _ClassVar[Stage]
    STAGE_DECODING: _ClassVar[Stage]
    STAGE_DONE: _ClassVar[Stage]
VISIBILITY_UNSPECIFIED: Visibility
VISIBILITY_PRIVATE: Visibility
VISIBILITY_PUBLIC: Visibility
REVIEW_UNSPECIFIED: Review
REVIEW_NONE: Review
REVIEW_PENDING: Review
REVIEW_APPROVED: Review
STEP_CACHE_UNSPECIFIED: StepCache
STEP_CACHE_OFF: StepCache
STEP_CACHE_BALANCED: StepCache
STEP_CACHE_FAST: StepCache
VIDEO_STATUS_UNSPECIFIED: VideoStatus
VIDEO_STATUS_QUEUED: VideoStatus
VIDEO_STATUS_IN_PROGRESS: VideoStatus
VIDEO_STATUS_COMPLETED: VideoStatus
VIDEO_STATUS_FAILED: VideoStatus
VIDEO_STATUS_CANCELLED: VideoStatus
STAGE_UNSPECIFIED: Stage
STAGE_QUEUED: Stage
STAGE_ENCODING: Stage
STAGE_DENOISING: Stage
STAGE_DECODING: Stage
STAGE_DONE: Stage

class VideoError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class LoraRef(_message.Message):
    __slots__ = ("name", "scale")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    name: str
    scale: float
    def __init__(self, name: _Optional[str] = ..., scale: _Optional[float] = ...) -> None: ...

class ListLorasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoraInfo(_message.Message):
    __slots__ = ("name", "rank", "modules")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    MODULES_FIELD_NUMBER: _ClassVar[int]
    name: str
    rank: int
    modules: int
    def __init__(self, name: _Optional[str] = ..., rank: _Optional[int] = ..., modules: _Optional[int] = ...) -> None: ...

class ListLorasResponse(_message.Message):
    __slots__ = ("loras",)
    LORAS_FIELD_NUMBER: _ClassVar[int]
    loras: _containers.RepeatedCompositeFieldContainer[LoraInfo]
    def __init__(self, loras: _Optional[_Iterable[_Union[LoraInfo, _Mapping]]] = ...) -> None: ...

class Video(_message.Message):
    __slots__ = ("id", "status", "progress", "model", "size", "seconds", "fps", "seed", "steps", "prompt", "negative_prompt", "priority", "created_at", "started_at", "completed_at", "error", "stage", "step", "total_steps", "size_bytes", "sha256", "attempts", "visibility", "parent_id", "cameo_id", "review", "image_conditioned", "enhanced_prompt", "cache", "two_stage", "resumed_from_step", "loras")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    CAMEO_ID_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    IMAGE_CONDITIONED_FIELD_NUMBER: _ClassVar[int]
    ENHANCED_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    TWO_STAGE_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: VideoStatus
    progress: float
    model: str
    size: str
    seconds: float
    fps: str
    seed: int
    steps: int
    prompt: str
    negative_prompt: str
    priority: int
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    completed_at: _timestamp_pb2.Timestamp
    error: VideoError
    stage: Stage
    step: int
    total_steps: int
    size_bytes: int
    sha256: str
    attempts: int
    visibility: Visibility
    parent_id: str
    cameo_id: str
    review: Review
    image_conditioned: bool
    enhanced_prompt: str
    cache: StepCache
    two_stage: bool
    resumed_from_step: int
    loras: _containers.RepeatedCompositeFieldContainer[LoraRef]
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[VideoStatus, str]] = ..., progress: _Optional[float] = ..., model: _Optional[str] = ..., size: _Optional[str] = ..., seconds: _Optional[float] = ..., fps: _Optional[str] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., priority: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[VideoError, _Mapping]] = ..., stage: _Optional[_Union[Stage, str]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., attempts: _Optional[int] = ..., visibility: _Optional[_Union[Visibility, str]] = ..., parent_id: _Optional[str] = ..., cameo_id: _Optional[str] = ..., review: _Optional[_Union[Review, str]] = ..., image_conditioned: _Optional[bool] = ..., enhanced_prompt: _Optional[str] = ..., cache: _Optional[_Union[StepCache, str]] = ..., two_stage: _Optional[bool] = ..., resumed_from_step: _Optional[int] = ..., loras: _Optional[_Iterable[_Union[LoraRef, _Mapping]]] = ...) -> None: ...

class CreateVideoRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "size", "seconds", "fps", "seed", "steps", "guidance_scale", "audio_guidance_scale", "priority", "idempotency_key", "model", "image", "cameo_id", "visibility", "enhance_prompt", "cache", "two_stage", "loras")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CAMEO_ID_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    ENHANCE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    TWO_STAGE_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    negative_prompt: str
    size: str
    seconds: float
    fps: str
    seed: int
    steps: int
    guidance_scale: float
    audio_guidance_scale: float
    priority: int
    idempotency_key: str
    model: str
    image: bytes
    cameo_id: str
    visibility: Visibility
    enhance_prompt: bool
    cache: StepCache
    two_stage: bool
    loras: _containers.RepeatedCompositeFieldContainer[LoraRef]
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., size: _Optional[str] = ..., seconds: _Optional[float] = ..., fps: _Optional[str] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., audio_guidance_scale: _Optional[float] = ..., priority: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., model: _Optional[str] = ..., image: _Optional[bytes] = ..., cameo_id: _Optional[str] = ..., visibility: _Optional[_Union[Visibility, str]] = ..., enhance_prompt: _Optional[bool] = ..., cache: _Optional[_Union[StepCache, str]] = ..., two_stage: _Optional[bool] = ..., loras: _Optional[_Iterable[_Union[LoraRef, _Mapping]]] = ...) -> None: ...

class RemixVideoRequest(_message.Message):
    __slots__ = ("video_id", "prompt", "strength", "seed", "idempotency_key", "visibility", "enhance_prompt", "loras")
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    ENHANCE_PROMPT_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    video_id: str
    prompt: str
    strength: float
    seed: int
    idempotency_key: str
    visibility: Visibility
    enhance_prompt: bool
    loras: _containers.RepeatedCompositeFieldContainer[LoraRef]
    def __init__(self, video_id: _Optional[str] = ..., prompt: _Optional[str] = ..., strength: _Optional[float] = ..., seed: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., visibility: _Optional[_Union[Visibility, str]] = ..., enhance_prompt: _Optional[bool] = ..., loras: _Optional[_Iterable[_Union[LoraRef, _Mapping]]] = ...) -> None: ...

class SetVideoVisibilityRequest(_message.Message):
    __slots__ = ("id", "visibility")
    ID_FIELD_NUMBER: _ClassVar[int]
    VISIBILITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    visibility: Visibility
    def __init__(self, id: _Optional[str] = ..., visibility: _Optional[_Union[Visibility, str]] = ...) -> None: ...

class ListPublicVideosRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class PublicVideo(_message.Message):
    __slots__ = ("id", "prompt", "size", "seconds", "fps", "created_at", "parent_id", "size_bytes")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: str
    size: str
    seconds: float
    fps: str
    created_at: _timestamp_pb2.Timestamp
    parent_id: str
    size_bytes: int
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[str] = ..., size: _Optional[str] = ..., seconds: _Optional[float] = ..., fps: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., parent_id: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ListPublicVideosResponse(_message.Message):
    __slots__ = ("videos", "next_page_token")
    VIDEOS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    videos: _containers.RepeatedCompositeFieldContainer[PublicVideo]
    next_page_token: str
    def __init__(self, videos: _Optional[_Iterable[_Union[PublicVideo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CameoGrant(_message.Message):
    __slots__ = ("tenant", "user", "granted_at", "revoked_at")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    GRANTED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    user: str
    granted_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, tenant: _Optional[str] = ..., user: _Optional[str] = ..., granted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Cameo(_message.Message):
    __slots__ = ("id", "name", "require_approval", "consent_statement", "consent_at", "consent_key_id", "has_voice", "grants", "created_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    CONSENT_STATEMENT_FIELD_NUMBER: _ClassVar[int]
    CONSENT_AT_FIELD_NUMBER: _ClassVar[int]
    CONSENT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    HAS_VOICE_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    require_approval: bool
    consent_statement: str
    consent_at: _timestamp_pb2.Timestamp
    consent_key_id: str
    has_voice: bool
    grants: _containers.RepeatedCompositeFieldContainer[CameoGrant]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., require_approval: _Optional[bool] = ..., consent_statement: _Optional[str] = ..., consent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., consent_key_id: _Optional[str] = ..., has_voice: _Optional[bool] = ..., grants: _Optional[_Iterable[_Union[CameoGrant, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCameoRequest(_message.Message):
    __slots__ = ("recording", "name", "consent_statement", "consent", "require_approval")
    RECORDING_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONSENT_STATEMENT_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_APPROVAL_FIELD_NUMBER: _ClassVar[int]
    recording: bytes
    name: str
    consent_statement: str
    consent: bool
    require_approval: bool
    def __init__(self, recording: _Optional[bytes] = ..., name: _Optional[str] = ..., consent_statement: _Optional[str] = ..., consent: _Optional[bool] = ..., require_approval: _Optional[bool] = ...) -> None: ...

class GetCameoRequest(_message.Message):
    __slots__ = ("cameo_id",)
    CAMEO_ID_FIELD_NUMBER: _ClassVar[int]
    cameo_id: str
    def __init__(self, cameo_id: _Optional[str] = ...) -> None: ...

class ListCameosRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCameosResponse(_message.Message):
    __slots__ = ("cameos",)
    CAMEOS_FIELD_NUMBER: _ClassVar[int]
    cameos: _containers.RepeatedCompositeFieldContainer[Cameo]
    def __init__(self, cameos: _Optional[_Iterable[_Union[Cameo, _Mapping]]] = ...) -> None: ...

class DeleteCameoRequest(_message.Message):
    __slots__ = ("cameo_id",)
    CAMEO_ID_FIELD_NUMBER: _ClassVar[int]
    cameo_id: str
    def __init__(self, cameo_id: _Optional[str] = ...) -> None: ...

class DeleteCameoResponse(_message.Message):
    __slots__ = ("cameo_id", "deleted")
    CAMEO_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    cameo_id: str
    deleted: bool
    def __init__(self, cameo_id: _Optional[str] = ..., deleted: _Optional[bool] = ...) -> None: ...

class GrantCameoRequest(_message.Message):
    __slots__ = ("cameo_id", "tenant", "user")
    CAMEO_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    cameo_id: str
    tenant: str
    user: str
    def __init__(self, cameo_id: _Optional[str] = ..., tenant: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class RevokeCameoRequest(_message.Message):
    __slots__ = ("cameo_id", "tenant", "user")
    CAMEO_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    cameo_id: str
    tenant: str
    user: str
    def __init__(self, cameo_id: _Optional[str] = ..., tenant: _Optional[str] = ..., user: _Optional[str] = ...) -> None: ...

class ListCameoVideosRequest(_message.Message):
    __slots__ = ("cameo_id", "page_size", "page_token")
    CAMEO_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    cameo_id: str
    page_size: int
    page_token: str
    def __init__(self, cameo_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class DeleteCameoVideoRequest(_message.Message):
    __slots__ = ("cameo_id", "video_id")
    CAMEO_ID_FIELD_NUMBER: _ClassVar[int]
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    cameo_id: str
    video_id: str
    def __init__(self, cameo_id: _Optional[str] = ..., video_id: _Optional[str] = ...) -> None: ...

class ReviewCameoVideoRequest(_message.Message):
    __slots__ = ("cameo_id", "video_id", "approve")
    CAMEO_ID_FIELD_NUMBER: _ClassVar[int]
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    cameo_id: str
    video_id: str
    approve: bool
    def __init__(self, cameo_id: _Optional[str] = ..., video_id: _Optional[str] = ..., approve: _Optional[bool] = ...) -> None: ...

class CameoNotification(_message.Message):
    __slots__ = ("id", "cameo_id", "kind", "video_id", "creator_tenant", "message", "at")
    ID_FIELD_NUMBER: _ClassVar[int]
    CAMEO_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    CREATOR_TENANT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    id: int
    cameo_id: str
    kind: str
    video_id: str
    creator_tenant: str
    message: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[int] = ..., cameo_id: _Optional[str] = ..., kind: _Optional[str] = ..., video_id: _Optional[str] = ..., creator_tenant: _Optional[str] = ..., message: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListCameoNotificationsRequest(_message.Message):
    __slots__ = ("after_id",)
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    after_id: int
    def __init__(self, after_id: _Optional[int] = ...) -> None: ...

class ListCameoNotificationsResponse(_message.Message):
    __slots__ = ("notifications",)
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    notifications: _containers.RepeatedCompositeFieldContainer[CameoNotification]
    def __init__(self, notifications: _Optional[_Iterable[_Union[CameoNotification, _Mapping]]] = ...) -> None: ...

class WatchCameoNotificationsRequest(_message.Message):
    __slots__ = ("after_id",)
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    after_id: int
    def __init__(self, after_id: _Optional[int] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "kind", "category", "reason", "at", "field")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    id: int
    kind: str
    category: str
    reason: str
    at: _timestamp_pb2.Timestamp
    field: str
    def __init__(self, id: _Optional[int] = ..., kind: _Optional[str] = ..., category: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., field: _Optional[str] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ...) -> None: ...

class GetVideoRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelVideoRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteVideoRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteVideoResponse(_message.Message):
    __slots__ = ("id", "deleted")
    ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    id: str
    deleted: bool
    def __init__(self, id: _Optional[str] = ..., deleted: _Optional[bool] = ...) -> None: ...

class ListVideosRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "status")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    status: VideoStatus
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., status: _Optional[_Union[VideoStatus, str]] = ...) -> None: ...

class ListVideosResponse(_message.Message):
    __slots__ = ("videos", "next_page_token")
    VIDEOS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    videos: _containers.RepeatedCompositeFieldContainer[Video]
    next_page_token: str
    def __init__(self, videos: _Optional[_Iterable[_Union[Video, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchVideoRequest(_message.Message):
    __slots__ = ("id", "history")
    ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    id: str
    history: bool
    def __init__(self, id: _Optional[str] = ..., history: _Optional[bool] = ...) -> None: ...

class VideoEvent(_message.Message):
    __slots__ = ("video_id", "status", "stage", "step", "total_steps", "progress", "queue_position", "eta_seconds", "batch_size", "message", "at", "terminal", "error")
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    video_id: str
    status: VideoStatus
    stage: Stage
    step: int
    total_steps: int
    progress: float
    queue_position: int
    eta_seconds: float
    batch_size: int
    message: str
    at: _timestamp_pb2.Timestamp
    terminal: bool
    error: VideoError
    def __init__(self, video_id: _Optional[str] = ..., status: _Optional[_Union[VideoStatus, str]] = ..., stage: _Optional[_Union[Stage, str]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., progress: _Optional[float] = ..., queue_position: _Optional[int] = ..., eta_seconds: _Optional[float] = ..., batch_size: _Optional[int] = ..., message: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., terminal: _Optional[bool] = ..., error: _Optional[_Union[VideoError, _Mapping]] = ...) -> None: ...

class DownloadVideoRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DownloadHeader(_message.Message):
    __slots__ = ("video_id", "size_bytes", "content_type", "sha256", "filename")
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    video_id: str
    size_bytes: int
    content_type: str
    sha256: str
    filename: str
    def __init__(self, video_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., content_type: _Optional[str] = ..., sha256: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class DownloadVideoResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: DownloadHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[DownloadHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...
