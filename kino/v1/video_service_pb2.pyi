import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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

class Video(_message.Message):
    __slots__ = ("id", "status", "progress", "model", "size", "seconds", "fps", "seed", "steps", "prompt", "negative_prompt", "priority", "created_at", "started_at", "completed_at", "error", "stage", "step", "total_steps", "size_bytes", "sha256", "attempts")
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
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[VideoStatus, str]] = ..., progress: _Optional[float] = ..., model: _Optional[str] = ..., size: _Optional[str] = ..., seconds: _Optional[float] = ..., fps: _Optional[str] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., priority: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., error: _Optional[_Union[VideoError, _Mapping]] = ..., stage: _Optional[_Union[Stage, str]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., attempts: _Optional[int] = ...) -> None: ...

class CreateVideoRequest(_message.Message):
    __slots__ = ("prompt", "negative_prompt", "size", "seconds", "fps", "seed", "steps", "guidance_scale", "audio_guidance_scale", "priority", "idempotency_key", "model")
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
    def __init__(self, prompt: _Optional[str] = ..., negative_prompt: _Optional[str] = ..., size: _Optional[str] = ..., seconds: _Optional[float] = ..., fps: _Optional[str] = ..., seed: _Optional[int] = ..., steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., audio_guidance_scale: _Optional[float] = ..., priority: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., model: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

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
