from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrollRequest(_message.Message):
    __slots__ = ("token", "hostname", "labels", "info")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    token: str
    hostname: str
    labels: _containers.ScalarMap[str, str]
    info: DeviceInfo
    def __init__(self, token: _Optional[str] = ..., hostname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., info: _Optional[_Union[DeviceInfo, _Mapping]] = ...) -> None: ...

class DeviceInfo(_message.Message):
    __slots__ = ("platform", "machine", "cpu_count", "cpu_features", "memory_bytes", "agent_version")
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    CPU_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    platform: str
    machine: str
    cpu_count: int
    cpu_features: _containers.RepeatedScalarFieldContainer[str]
    memory_bytes: int
    agent_version: str
    def __init__(self, platform: _Optional[str] = ..., machine: _Optional[str] = ..., cpu_count: _Optional[int] = ..., cpu_features: _Optional[_Iterable[str]] = ..., memory_bytes: _Optional[int] = ..., agent_version: _Optional[str] = ...) -> None: ...

class EnrollResponse(_message.Message):
    __slots__ = ("device_id", "credential", "trusted_publisher_keys")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    TRUSTED_PUBLISHER_KEYS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    credential: str
    trusted_publisher_keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, device_id: _Optional[str] = ..., credential: _Optional[str] = ..., trusted_publisher_keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "state", "metrics")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    state: ReportedState
    metrics: DeviceMetrics
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., state: _Optional[_Union[ReportedState, _Mapping]] = ..., metrics: _Optional[_Union[DeviceMetrics, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_version", "info")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    info: DeviceInfo
    def __init__(self, agent_version: _Optional[str] = ..., info: _Optional[_Union[DeviceInfo, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sequence", "sent_unix")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    sent_unix: float
    def __init__(self, sequence: _Optional[int] = ..., sent_unix: _Optional[float] = ...) -> None: ...

class ReportedState(_message.Message):
    __slots__ = ("bundle_id", "deployment_id", "phase", "error", "target_bundle_id", "progress", "active_variant", "switch_reason", "profiles", "sensors")
    class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        PHASE_UNSPECIFIED: _ClassVar[ReportedState.Phase]
        IDLE: _ClassVar[ReportedState.Phase]
        DOWNLOADING: _ClassVar[ReportedState.Phase]
        VERIFYING: _ClassVar[ReportedState.Phase]
        INSTALLING: _ClassVar[ReportedState.Phase]
        INSTALLED: _ClassVar[ReportedState.Phase]
        FAILED: _ClassVar[ReportedState.Phase]
    PHASE_UNSPECIFIED: ReportedState.Phase
    IDLE: ReportedState.Phase
    DOWNLOADING: ReportedState.Phase
    VERIFYING: ReportedState.Phase
    INSTALLING: ReportedState.Phase
    INSTALLED: ReportedState.Phase
    FAILED: ReportedState.Phase
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    TARGET_BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VARIANT_FIELD_NUMBER: _ClassVar[int]
    SWITCH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    deployment_id: str
    phase: ReportedState.Phase
    error: str
    target_bundle_id: str
    progress: float
    active_variant: str
    switch_reason: str
    profiles: _containers.RepeatedCompositeFieldContainer[VariantProfile]
    sensors: SensorReading
    def __init__(self, bundle_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., phase: _Optional[_Union[ReportedState.Phase, str]] = ..., error: _Optional[str] = ..., target_bundle_id: _Optional[str] = ..., progress: _Optional[float] = ..., active_variant: _Optional[str] = ..., switch_reason: _Optional[str] = ..., profiles: _Optional[_Iterable[_Union[VariantProfile, _Mapping]]] = ..., sensors: _Optional[_Union[SensorReading, _Mapping]] = ...) -> None: ...

class VariantProfile(_message.Message):
    __slots__ = ("variant_id", "engine", "latency_p50_seconds", "latency_p95_seconds", "cpu_seconds_per_inference", "peak_memory_bytes", "runs")
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_PER_INFERENCE_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    variant_id: str
    engine: str
    latency_p50_seconds: float
    latency_p95_seconds: float
    cpu_seconds_per_inference: float
    peak_memory_bytes: int
    runs: int
    def __init__(self, variant_id: _Optional[str] = ..., engine: _Optional[str] = ..., latency_p50_seconds: _Optional[float] = ..., latency_p95_seconds: _Optional[float] = ..., cpu_seconds_per_inference: _Optional[float] = ..., peak_memory_bytes: _Optional[int] = ..., runs: _Optional[int] = ...) -> None: ...

class SensorReading(_message.Message):
    __slots__ = ("battery_percent", "power_plugged", "temperature_celsius", "cpu_load_percent", "memory_available_bytes", "cpu_frequency_mhz", "source")
    BATTERY_PERCENT_FIELD_NUMBER: _ClassVar[int]
    POWER_PLUGGED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_CELSIUS_FIELD_NUMBER: _ClassVar[int]
    CPU_LOAD_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_FREQUENCY_MHZ_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    battery_percent: float
    power_plugged: bool
    temperature_celsius: float
    cpu_load_percent: float
    memory_available_bytes: int
    cpu_frequency_mhz: float
    source: str
    def __init__(self, battery_percent: _Optional[float] = ..., power_plugged: _Optional[bool] = ..., temperature_celsius: _Optional[float] = ..., cpu_load_percent: _Optional[float] = ..., memory_available_bytes: _Optional[int] = ..., cpu_frequency_mhz: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class DeviceMetrics(_message.Message):
    __slots__ = ("timestamp_unix", "sensors", "active_variant", "variants", "switches")
    TIMESTAMP_UNIX_FIELD_NUMBER: _ClassVar[int]
    SENSORS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VARIANT_FIELD_NUMBER: _ClassVar[int]
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    SWITCHES_FIELD_NUMBER: _ClassVar[int]
    timestamp_unix: float
    sensors: SensorReading
    active_variant: str
    variants: _containers.RepeatedCompositeFieldContainer[VariantCounters]
    switches: _containers.RepeatedCompositeFieldContainer[SwitchCount]
    def __init__(self, timestamp_unix: _Optional[float] = ..., sensors: _Optional[_Union[SensorReading, _Mapping]] = ..., active_variant: _Optional[str] = ..., variants: _Optional[_Iterable[_Union[VariantCounters, _Mapping]]] = ..., switches: _Optional[_Iterable[_Union[SwitchCount, _Mapping]]] = ...) -> None: ...

class VariantCounters(_message.Message):
    __slots__ = ("variant_id", "inferences_total", "errors_total", "latency_seconds_sum", "latency_p50_seconds", "latency_p95_seconds")
    VARIANT_ID_FIELD_NUMBER: _ClassVar[int]
    INFERENCES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERRORS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_SECONDS_SUM_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_SECONDS_FIELD_NUMBER: _ClassVar[int]
    variant_id: str
    inferences_total: int
    errors_total: int
    latency_seconds_sum: float
    latency_p50_seconds: float
    latency_p95_seconds: float
    def __init__(self, variant_id: _Optional[str] = ..., inferences_total: _Optional[int] = ..., errors_total: _Optional[int] = ..., latency_seconds_sum: _Optional[float] = ..., latency_p50_seconds: _Optional[float] = ..., latency_p95_seconds: _Optional[float] = ...) -> None: ...

class SwitchCount(_message.Message):
    __slots__ = ("reason", "total")
    REASON_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    reason: str
    total: int
    def __init__(self, reason: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("desired", "ack")
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    desired: DesiredState
    ack: HeartbeatAck
    def __init__(self, desired: _Optional[_Union[DesiredState, _Mapping]] = ..., ack: _Optional[_Union[HeartbeatAck, _Mapping]] = ...) -> None: ...

class HeartbeatAck(_message.Message):
    __slots__ = ("sequence", "server_unix")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_UNIX_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    server_unix: float
    def __init__(self, sequence: _Optional[int] = ..., server_unix: _Optional[float] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("bundle_id", "deployment_id", "manifest", "signature", "publisher_key")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_KEY_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    deployment_id: str
    manifest: bytes
    signature: bytes
    publisher_key: bytes
    def __init__(self, bundle_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., publisher_key: _Optional[bytes] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("digest", "offset")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "data", "sha256", "total_size")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    sha256: str
    total_size: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class CreateEnrollmentTokenRequest(_message.Message):
    __slots__ = ("ttl_seconds", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ttl_seconds: float
    labels: _containers.ScalarMap[str, str]
    def __init__(self, ttl_seconds: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EnrollmentToken(_message.Message):
    __slots__ = ("token", "expires_unix")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    token: str
    expires_unix: float
    def __init__(self, token: _Optional[str] = ..., expires_unix: _Optional[float] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("device_id", "hostname", "labels", "info", "online", "last_seen_unix", "enrolled_unix", "desired_bundle_id", "desired_deployment_id", "reported", "certificate_common_name")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_UNIX_FIELD_NUMBER: _ClassVar[int]
    DESIRED_BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    DESIRED_DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_COMMON_NAME_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    hostname: str
    labels: _containers.ScalarMap[str, str]
    info: DeviceInfo
    online: bool
    last_seen_unix: float
    enrolled_unix: float
    desired_bundle_id: str
    desired_deployment_id: str
    reported: ReportedState
    certificate_common_name: str
    def __init__(self, device_id: _Optional[str] = ..., hostname: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., info: _Optional[_Union[DeviceInfo, _Mapping]] = ..., online: _Optional[bool] = ..., last_seen_unix: _Optional[float] = ..., enrolled_unix: _Optional[float] = ..., desired_bundle_id: _Optional[str] = ..., desired_deployment_id: _Optional[str] = ..., reported: _Optional[_Union[ReportedState, _Mapping]] = ..., certificate_common_name: _Optional[str] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ("label_selector",)
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    label_selector: str
    def __init__(self, label_selector: _Optional[str] = ...) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class GetDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class RemoveDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class SetDeviceLabelsRequest(_message.Message):
    __slots__ = ("device_id", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, device_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UploadBundleRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: BundleHeader
    chunk: FileChunk
    def __init__(self, header: _Optional[_Union[BundleHeader, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ...) -> None: ...

class BundleHeader(_message.Message):
    __slots__ = ("manifest", "signature", "publisher_key")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PUBLISHER_KEY_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    signature: bytes
    publisher_key: bytes
    def __init__(self, manifest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., publisher_key: _Optional[bytes] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("digest", "data")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    digest: str
    data: bytes
    def __init__(self, digest: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Bundle(_message.Message):
    __slots__ = ("bundle_id", "model", "version", "variant_ids", "total_bytes", "created_unix", "manifest")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VARIANT_IDS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    model: str
    version: str
    variant_ids: _containers.RepeatedScalarFieldContainer[str]
    total_bytes: int
    created_unix: float
    manifest: bytes
    def __init__(self, bundle_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., variant_ids: _Optional[_Iterable[str]] = ..., total_bytes: _Optional[int] = ..., created_unix: _Optional[float] = ..., manifest: _Optional[bytes] = ...) -> None: ...

class ListBundlesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBundlesResponse(_message.Message):
    __slots__ = ("bundles",)
    BUNDLES_FIELD_NUMBER: _ClassVar[int]
    bundles: _containers.RepeatedCompositeFieldContainer[Bundle]
    def __init__(self, bundles: _Optional[_Iterable[_Union[Bundle, _Mapping]]] = ...) -> None: ...

class RemoveBundleRequest(_message.Message):
    __slots__ = ("bundle_id",)
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    def __init__(self, bundle_id: _Optional[str] = ...) -> None: ...

class RemoveBundleResponse(_message.Message):
    __slots__ = ("bundle", "removed_deployment_ids", "removed_digests", "freed_bytes")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    REMOVED_DEPLOYMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    FREED_BYTES_FIELD_NUMBER: _ClassVar[int]
    bundle: Bundle
    removed_deployment_ids: _containers.RepeatedScalarFieldContainer[str]
    removed_digests: _containers.RepeatedScalarFieldContainer[str]
    freed_bytes: int
    def __init__(self, bundle: _Optional[_Union[Bundle, _Mapping]] = ..., removed_deployment_ids: _Optional[_Iterable[str]] = ..., removed_digests: _Optional[_Iterable[str]] = ..., freed_bytes: _Optional[int] = ...) -> None: ...

class CreateDeploymentRequest(_message.Message):
    __slots__ = ("bundle_id", "device_ids", "label_selector", "timeout_seconds", "rollback_on_failure", "rollback_on_timeout", "max_in_flight")
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_IDS_FIELD_NUMBER: _ClassVar[int]
    LABEL_SELECTOR_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_ON_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    bundle_id: str
    device_ids: _containers.RepeatedScalarFieldContainer[str]
    label_selector: str
    timeout_seconds: float
    rollback_on_failure: bool
    rollback_on_timeout: bool
    max_in_flight: int
    def __init__(self, bundle_id: _Optional[str] = ..., device_ids: _Optional[_Iterable[str]] = ..., label_selector: _Optional[str] = ..., timeout_seconds: _Optional[float] = ..., rollback_on_failure: _Optional[bool] = ..., rollback_on_timeout: _Optional[bool] = ..., max_in_flight: _Optional[int] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("deployment_id", "bundle_id", "state", "created_unix", "deadline_unix", "finished_unix", "targets", "rollback_on_failure", "rollback_on_timeout", "rollback_reason", "max_in_flight")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[Deployment.State]
        IN_PROGRESS: _ClassVar[Deployment.State]
        SUCCEEDED: _ClassVar[Deployment.State]
        FAILED: _ClassVar[Deployment.State]
        ROLLED_BACK: _ClassVar[Deployment.State]
        TIMED_OUT: _ClassVar[Deployment.State]
    STATE_UNSPECIFIED: Deployment.State
    IN_PROGRESS: Deployment.State
    SUCCEEDED: Deployment.State
    FAILED: Deployment.State
    ROLLED_BACK: Deployment.State
    TIMED_OUT: Deployment.State
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_ON_FAILURE_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_ON_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    bundle_id: str
    state: Deployment.State
    created_unix: float
    deadline_unix: float
    finished_unix: float
    targets: _containers.RepeatedCompositeFieldContainer[DeploymentTarget]
    rollback_on_failure: bool
    rollback_on_timeout: bool
    rollback_reason: str
    max_in_flight: int
    def __init__(self, deployment_id: _Optional[str] = ..., bundle_id: _Optional[str] = ..., state: _Optional[_Union[Deployment.State, str]] = ..., created_unix: _Optional[float] = ..., deadline_unix: _Optional[float] = ..., finished_unix: _Optional[float] = ..., targets: _Optional[_Iterable[_Union[DeploymentTarget, _Mapping]]] = ..., rollback_on_failure: _Optional[bool] = ..., rollback_on_timeout: _Optional[bool] = ..., rollback_reason: _Optional[str] = ..., max_in_flight: _Optional[int] = ...) -> None: ...

class DeploymentTarget(_message.Message):
    __slots__ = ("device_id", "phase", "error", "rollback_bundle_id", "release")
    class Release(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        RELEASE_UNSPECIFIED: _ClassVar[DeploymentTarget.Release]
        RELEASED: _ClassVar[DeploymentTarget.Release]
        WAITING: _ClassVar[DeploymentTarget.Release]
        NOT_STARTED: _ClassVar[DeploymentTarget.Release]
    RELEASE_UNSPECIFIED: DeploymentTarget.Release
    RELEASED: DeploymentTarget.Release
    WAITING: DeploymentTarget.Release
    NOT_STARTED: DeploymentTarget.Release
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_BUNDLE_ID_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    phase: ReportedState.Phase
    error: str
    rollback_bundle_id: str
    release: DeploymentTarget.Release
    def __init__(self, device_id: _Optional[str] = ..., phase: _Optional[_Union[ReportedState.Phase, str]] = ..., error: _Optional[str] = ..., rollback_bundle_id: _Optional[str] = ..., release: _Optional[_Union[DeploymentTarget.Release, str]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("deployment_id",)
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    def __init__(self, deployment_id: _Optional[str] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ...) -> None: ...

class GetFleetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FleetStatus(_message.Message):
    __slots__ = ("devices_total", "devices_online", "bundles_total", "deployments_in_progress", "devices", "targets_waiting")
    DEVICES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEVICES_ONLINE_FIELD_NUMBER: _ClassVar[int]
    BUNDLES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    TARGETS_WAITING_FIELD_NUMBER: _ClassVar[int]
    devices_total: int
    devices_online: int
    bundles_total: int
    deployments_in_progress: int
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    targets_waiting: int
    def __init__(self, devices_total: _Optional[int] = ..., devices_online: _Optional[int] = ..., bundles_total: _Optional[int] = ..., deployments_in_progress: _Optional[int] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ..., targets_waiting: _Optional[int] = ...) -> None: ...
