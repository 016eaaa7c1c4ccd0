import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TenantState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENANT_STATE_UNKNOWN: _ClassVar[TenantState]
    TENANT_STATE_PROVISIONING: _ClassVar[TenantState]
    TENANT_STATE_RUNNING: _ClassVar[TenantState]
    TENANT_STATE_DELETED: _ClassVar[TenantState]
    TENANT_STATE_SUSPENDED: _ClassVar[TenantState]
    TENANT_STATE_ONLINE_MAINTENANCE: _ClassVar[TenantState]
    TENANT_STATE_OFFLINE_MAINTENANCE: _ClassVar[TenantState]
    TENANT_STATE_PROVISIONING_FAILED: _ClassVar[TenantState]
    TENANT_STATE_DELETING: _ClassVar[TenantState]
    TENANT_STATE_DELETE_FAILED: _ClassVar[TenantState]
    TENANT_STATE_MIGRATION_PENDING: _ClassVar[TenantState]

class ChangeSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_SOURCE_UNSPECIFIED: _ClassVar[ChangeSource]
    CHANGE_SOURCE_POLL: _ClassVar[ChangeSource]
    CHANGE_SOURCE_NOTIFICATION: _ClassVar[ChangeSource]

class ChangeType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANGE_TYPE_UNSPECIFIED: _ClassVar[ChangeType]
    CHANGE_TYPE_UPGRADE: _ClassVar[ChangeType]
    CHANGE_TYPE_BACKUP_RESTORED: _ClassVar[ChangeType]
    CHANGE_TYPE_SUSPEND: _ClassVar[ChangeType]
    CHANGE_TYPE_RESUME: _ClassVar[ChangeType]
    CHANGE_TYPE_DELETE: _ClassVar[ChangeType]
    CHANGE_TYPE_MOVE: _ClassVar[ChangeType]

class WatchEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_EVENT_TYPE_UNSPECIFIED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_SNAPSHOT: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_SYNCED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_CHANGED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_REMOVED: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_HEARTBEAT: _ClassVar[WatchEventType]
    WATCH_EVENT_TYPE_RESET: _ClassVar[WatchEventType]
TENANT_STATE_UNKNOWN: TenantState
TENANT_STATE_PROVISIONING: TenantState
TENANT_STATE_RUNNING: TenantState
TENANT_STATE_DELETED: TenantState
TENANT_STATE_SUSPENDED: TenantState
TENANT_STATE_ONLINE_MAINTENANCE: TenantState
TENANT_STATE_OFFLINE_MAINTENANCE: TenantState
TENANT_STATE_PROVISIONING_FAILED: TenantState
TENANT_STATE_DELETING: TenantState
TENANT_STATE_DELETE_FAILED: TenantState
TENANT_STATE_MIGRATION_PENDING: TenantState
CHANGE_SOURCE_UNSPECIFIED: ChangeSource
CHANGE_SOURCE_POLL: ChangeSource
CHANGE_SOURCE_NOTIFICATION: ChangeSource
CHANGE_TYPE_UNSPECIFIED: ChangeType
CHANGE_TYPE_UPGRADE: ChangeType
CHANGE_TYPE_BACKUP_RESTORED: ChangeType
CHANGE_TYPE_SUSPEND: ChangeType
CHANGE_TYPE_RESUME: ChangeType
CHANGE_TYPE_DELETE: ChangeType
CHANGE_TYPE_MOVE: ChangeType
WATCH_EVENT_TYPE_UNSPECIFIED: WatchEventType
WATCH_EVENT_TYPE_SNAPSHOT: WatchEventType
WATCH_EVENT_TYPE_SYNCED: WatchEventType
WATCH_EVENT_TYPE_CHANGED: WatchEventType
WATCH_EVENT_TYPE_REMOVED: WatchEventType
WATCH_EVENT_TYPE_HEARTBEAT: WatchEventType
WATCH_EVENT_TYPE_RESET: WatchEventType

class Notification(_message.Message):
    __slots__ = ("change_type", "version_name", "file_version", "public_endpoint", "received_at")
    CHANGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    VERSION_NAME_FIELD_NUMBER: _ClassVar[int]
    FILE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    change_type: ChangeType
    version_name: str
    file_version: str
    public_endpoint: str
    received_at: _timestamp_pb2.Timestamp
    def __init__(self, change_type: _Optional[_Union[ChangeType, str]] = ..., version_name: _Optional[str] = ..., file_version: _Optional[str] = ..., public_endpoint: _Optional[str] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("context_identifier", "state", "is_running", "endpoint", "api", "version", "valid_until", "observed_at", "revision", "last_change_source", "last_notification", "stale", "last_error", "changed_at", "held_until")
    CONTEXT_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LAST_CHANGE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    LAST_NOTIFICATION_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    HELD_UNTIL_FIELD_NUMBER: _ClassVar[int]
    context_identifier: str
    state: TenantState
    is_running: bool
    endpoint: str
    api: str
    version: str
    valid_until: _timestamp_pb2.Timestamp
    observed_at: _timestamp_pb2.Timestamp
    revision: int
    last_change_source: ChangeSource
    last_notification: Notification
    stale: bool
    last_error: str
    changed_at: _timestamp_pb2.Timestamp
    held_until: _timestamp_pb2.Timestamp
    def __init__(self, context_identifier: _Optional[str] = ..., state: _Optional[_Union[TenantState, str]] = ..., is_running: _Optional[bool] = ..., endpoint: _Optional[str] = ..., api: _Optional[str] = ..., version: _Optional[str] = ..., valid_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., last_change_source: _Optional[_Union[ChangeSource, str]] = ..., last_notification: _Optional[_Union[Notification, _Mapping]] = ..., stale: _Optional[bool] = ..., last_error: _Optional[str] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., held_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetTenantStateRequest(_message.Message):
    __slots__ = ("context_identifier",)
    CONTEXT_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    context_identifier: str
    def __init__(self, context_identifier: _Optional[str] = ...) -> None: ...

class GetTenantStateResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ...) -> None: ...

class WatchTenantRequest(_message.Message):
    __slots__ = ("context_identifiers", "since_revision")
    CONTEXT_IDENTIFIERS_FIELD_NUMBER: _ClassVar[int]
    SINCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    context_identifiers: _containers.RepeatedScalarFieldContainer[str]
    since_revision: int
    def __init__(self, context_identifiers: _Optional[_Iterable[str]] = ..., since_revision: _Optional[int] = ...) -> None: ...

class WatchTenantResponse(_message.Message):
    __slots__ = ("type", "tenant", "context_identifier", "revision")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_IDENTIFIER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    type: WatchEventType
    tenant: Tenant
    context_identifier: str
    revision: int
    def __init__(self, type: _Optional[_Union[WatchEventType, str]] = ..., tenant: _Optional[_Union[Tenant, _Mapping]] = ..., context_identifier: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "states")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    states: _containers.RepeatedScalarFieldContainer[TenantState]
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., states: _Optional[_Iterable[_Union[TenantState, str]]] = ...) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants", "next_page_token", "revision")
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    next_page_token: str
    revision: int
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...
