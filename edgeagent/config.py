"""Configuration: one TOML file loaded into frozen dataclasses.

Every key of CONTRACT section 3 is accepted from the first release so configs written today keep
working. Unknown keys, wrong types and bad values are refused at start with the dotted key name
and the reason, never silently ignored: a typo in a fleet config must not fall back to a default.
The schema is the dataclasses themselves (types + a ``check`` in field metadata), so the loader,
``config.get`` and the docs cannot drift apart.
"""

import dataclasses
import os
import re
import socket
import sys
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

from edgeagent.state.schedule import check_windows
from edgeagent.configcheck import Check, _check, _listen, _min, _one_of, _range, _rate  # noqa: F401
from edgeagent.errors import ConfigError
from edgeagent.record import KeywordRecord

if typing.TYPE_CHECKING:
    from dataclasses import dataclass
else:  # the same frozen sections, built without compiling a __setattr__ and __delattr__ each
    from edgeagent.record import keyword_dataclass as dataclass
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 devices only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = "/etc/edgeagent/config.toml"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TOPIC_BAD = re.compile(r"[#+\x00]")


@dataclass(frozen=True, init=False, eq=False, repr=False)
class DeviceConfig(KeywordRecord):
    """[device]: who this device is to the fleet (its topic prefix, the rollout groups it joins)."""
    id: str = ""  # empty = hostname
    groups: list[str] = field(default_factory=list)


@dataclass(frozen=True, init=False, eq=False, repr=False)
class TlsConfig(KeywordRecord):
    """[mqtt.tls]: files, not inline PEM, so a key can stay readable by the service user only."""
    ca: str = ""
    cert: str = ""
    key: str = ""


@dataclass(frozen=True, init=False, eq=False, repr=False)
class MqttConfig(KeywordRecord):
    """[mqtt]: the broker link; without a host the daemon serves standalone (the control socket still drives it)."""
    host: str = ""  # empty = MQTT disabled (the daemon runs standalone)
    port: int = _check(_range(1, 65535), default=1883)
    protocol: str = _check(_one_of("5", "3.1.1"), default="5")
    client_id: str = ""  # empty = "edgeagent-{device_id}"
    tls: TlsConfig = field(default_factory=TlsConfig)
    username: str = ""
    password_file: str = ""
    keepalive: int = _check(_range(5, 3600), default=30)
    topic_prefix: str = _check(lambda v: "must not contain '#', '+' or NUL" if _TOPIC_BAD.search(v) else None,
                               default="edgeagent/{device_id}")
    qos: int = _check(_range(0, 2), default=1)
    max_queued: int = _check(_min(1), default=1000)
    reconnect_min_s: float = _check(_min(0.05), default=1.0)
    reconnect_max_s: float = _check(_min(0.1), default=60.0)
    max_message_bytes: int = _check(_min(1024), default=1 << 20)


@dataclass(frozen=True, init=False, eq=False, repr=False)
class DelegateConfig(KeywordRecord):  # [model.delegate], or `delegate = "lib.so"` for {library = "lib.so"}
    """[model.delegate]: an accelerator library; the operator says what happens when it does not load."""
    library: str = ""  # an external delegate, e.g. libedgetpu.so.1 (Coral), libarmnnDelegate.so, libteflon.so
    options: dict[str, str] = field(default_factory=dict)  # passed to load_delegate, e.g. {device = "usb"}
    fallback: str = _check(_one_of("fail", "cpu"), default="fail")  # a delegate that does not load
    exclusive: bool | str = _check(lambda v: None if v in (True, False, "auto") else 'expected true, false or "auto"',
                                   default="auto")  # one process only (auto: libedgetpu)
    name: str = ""  # what a manifest's requires.delegate names (default: from the library, e.g. "edgetpu")


@dataclass(frozen=True, init=False, eq=False, repr=False)
class ModelConfig(KeywordRecord):
    """[model]: what is served and how, and where the A/B slots and their state live."""
    name: str = _check(lambda v: None if _MODEL_NAME.match(v) else "must match [A-Za-z0-9._-]{1,64}", default="model")
    state_dir: str = "/var/lib/edgeagent"
    initial: str = ""
    labels: str = ""  # one label per line, seeded with `initial` (updates carry their own)
    initial_version: int = _check(_min(1), default=1)
    backend: str = _check(_one_of("auto", "litert", "tflite"), default="auto")
    num_threads: int = _check(_range(0, 64), default=0)  # 0 = one per core
    delegate: DelegateConfig = field(default_factory=lambda: DelegateConfig())  # a library path, or the table
    input_mean: float = 0.0  # float inputs get (x - mean) / std, like TFLite's examples
    input_std: float = _check(lambda v: None if v != 0 else "must not be 0", default=255.0)
    # outside a trial, frames whose outputs no reader takes are checked for NaN/Inf one in N
    check_finite_every: int = _check(_range(1, 1000), default=8)


@dataclass(frozen=True, init=False, eq=False, repr=False)
class SyntheticInput(KeywordRecord):
    """[input.synthetic]: frames without hardware, for bring-up and tests."""
    pattern: str = _check(_one_of("gradient", "noise"), default="gradient")
    seed: int = 0


@dataclass(frozen=True, init=False, eq=False, repr=False)
class ImagesInput(KeywordRecord):
    """[input.images]: a folder of images served in a loop, for a model checked against known pictures."""
    dir: str = ""


@dataclass(frozen=True, init=False, eq=False, repr=False)
class CameraInput(KeywordRecord):
    """[input.camera]: OpenCV or picamera2; a video file stands in for a camera the same way."""
    backend: str = _check(_one_of("auto", "opencv", "picamera2"), default="auto")
    device: str = "0"  # index, /dev/videoN, a video file or an rtsp:// URL
    width: int = _check(_min(0), default=0)
    height: int = _check(_min(0), default=0)
    loop: bool = True  # start a video file again at its end


@dataclass(frozen=True, init=False, eq=False, repr=False)
class SensorInput(KeywordRecord):
    """[input.sensor]: an IIO device or a line stream, windowed to the model's time axis."""
    mode: str = _check(_one_of("iio", "stream"), default="iio")
    iio_device: str = "/sys/bus/iio/devices/iio:device0"
    channels: list[str] = field(default_factory=lambda: ["in_accel_x", "in_accel_y", "in_accel_z"])
    stream: str = ""  # a CSV file, FIFO or serial device with one sample per line
    delimiter: str = ","
    window: int = _check(_min(0), default=0)  # samples per inference; 0 = the model's time axis


@dataclass(frozen=True, init=False, eq=False, repr=False)
class InputConfig(KeywordRecord):
    """[input]: the source and the rate frames are taken at (the inference budget)."""
    source: str = _check(_one_of("synthetic", "images", "camera", "sensor"), default="synthetic")
    rate_hz: float = _check(_rate, default=10.0)  # 0 = as fast as possible
    synthetic: SyntheticInput = field(default_factory=SyntheticInput)
    images: ImagesInput = field(default_factory=ImagesInput)
    camera: CameraInput = field(default_factory=CameraInput)
    sensor: SensorInput = field(default_factory=SensorInput)


@dataclass(frozen=True, init=False, eq=False, repr=False)
class OutputConfig(KeywordRecord):
    """[output]: what of each result leaves the device, and how often: a metered link pays for every byte."""
    publish: str = _check(_one_of("none", "summary", "full"), default="summary")
    max_rate_hz: float = _check(_min(0), default=1.0)
    top_k: int = _check(_range(0, 100), default=5)  # classes named in each summary (output 0, a classifier's)


@dataclass(frozen=True, init=False, eq=False, repr=False)
class MonitorConfig(KeywordRecord):  # prediction quality (runtime/quality.py): windows of live frames against a reference
    """[monitor]: prediction quality against a reference, so a model that drifts is seen before users see it."""
    enabled: bool = True
    window: int = _check(_range(10, 1_000_000), default=300)  # frames per judged window
    window_s: float = _check(_range(1, 86400), default=60.0)  # or this long, whichever ends first
    alarm_windows: int = _check(_range(1, 1000), default=3)  # windows over the alarm line before model.drift
    learn_frames: int = _check(_range(10, 10_000_000), default=1000)  # a learned reference's size
    capture: str = _check(_one_of("none", "low_confidence", "drift"), default="none")  # samples kept (opt-in)
    capture_max_bytes: int = _check(_range(64 * 1024, 1 << 40), default=64 * 1024 * 1024)
    capture_min_interval_s: float = _check(_range(0, 86400), default=10.0)  # at most one sample this often


@dataclass(frozen=True, init=False, eq=False, repr=False)
class TelemetryConfig(KeywordRecord):
    """[telemetry]: how often the figures are read and sent, and where the board's sensors are."""
    interval_s: float = _check(_range(0.1, 3600), default=5.0)
    sysfs_root: str = "/"
    power_profile: str = _check(_one_of("auto", "pi4", "pi5", "jetson-nano", "orin-nano", "generic", "none"),
                                default="auto")


@dataclass(frozen=True, init=False, eq=False, repr=False)
class UpdateConfig(KeywordRecord):
    """[update]: who may sign a model, and the terms a new model is judged by before it is kept."""
    trusted_keys: list[str] = field(default_factory=list)  # PEM files or directories of them
    threshold: int = _check(_min(1), default=1)
    probation_s: float = _check(_min(0), default=60.0)
    min_inferences: int = _check(_min(0), default=20)
    max_latency_factor: float = _check(_min(1.0), default=2.0)
    max_payload_bytes: int = _check(_min(1), default=512 * 1024 * 1024)
    max_trial_attempts: int = _check(_min(1), default=2)
    health_timeout_s: float = _check(_min(1), default=60.0)
    max_crash_restarts: int = _check(_min(1), default=3)  # unclean restarts of a committed model before a rollback
    # a start counts as a crash until the model has served this long (or stopped cleanly)
    crash_window_s: float = _check(_range(1, 86400), default=600.0)
    # share of the trial's wall time the previous model may take to re-run on live frames
    shadow_budget_pct: int = _check(_range(0, 50), default=10)
    # a download that receives no byte for this long is retried (HTTP Range); a chunked transfer fails
    download_stall_s: float = _check(_range(1, 3600), default=60.0)
    # the whole fetch (retries included) ends within this: a trickling server cannot hold the updater
    download_deadline_s: float = _check(_range(10, 7 * 86400), default=3600.0)
    # file:// payload URLs in updates that arrive over MQTT (the local control socket and the
    # offline `install` keep them): off, so no message can make the daemon read a local path
    allow_file_urls: bool = False
    # bytes of MQTT transfer chunks held in memory before they reach the disk; beyond it, asked for again
    max_chunk_buffer_bytes: int = _check(_min(64 * 1024), default=16 * 1024 * 1024)
    # a wall clock more than this far past the newest time the device knows for sure (the
    # `created` of the last committed update, or this agent's release) is not saved as the time
    # floor: a bad NTP step to 2099 must not make every later update look premature
    clock_max_ahead_days: int = _check(_range(1, 3650), default=365)
    max_bytes_per_s: int = _check(_min(0), default=0)  # (runtime) download cap for metered links; 0 = none
    identity: str = ""  # the device's age identity (keygen --device): decrypts encrypted payloads
    # (runtime) local-time windows a verified update may switch in ("02:00-04:00"); empty = at once
    switch_window: list[str] = _check(check_windows, default_factory=list)


@dataclass(frozen=True, init=False, eq=False, repr=False)
class MetricsConfig(KeywordRecord):
    """[metrics]: Prometheus without MQTT: a textfile for node_exporter, or an endpoint."""
    # a node_exporter textfile collector file, rewritten atomically every telemetry interval
    textfile: str = _check(lambda v: "must end in .prom (node_exporter reads only those)"
                           if v and not v.endswith(".prom") else None, default="")
    listen: str = _check(_listen, default="")  # HOST:PORT to serve /metrics on; empty = no endpoint


@dataclass(frozen=True, init=False, eq=False, repr=False)
class HomeAssistantConfig(KeywordRecord):
    """[homeassistant]: discovery messages, so the device shows up without hand-written YAML."""
    discovery: bool = False  # publish MQTT discovery for Home Assistant
    prefix: str = _check(lambda v: "must be a topic without wildcards" if not v or _TOPIC_BAD.search(v) else None,
                         default="homeassistant")


@dataclass(frozen=True, init=False, eq=False, repr=False)
class ControlConfig(KeywordRecord):
    """[control]: the local socket the CLI talks to; its permissions are the access control."""
    socket: str = "/run/edgeagent/control.sock"


@dataclass(frozen=True, init=False, eq=False, repr=False)
class LogConfig(KeywordRecord):
    """[log]: the level; the journal (or stderr) is the only destination."""
    level: str = _check(_one_of("debug", "info", "warning", "error"), default="info")


@dataclass(frozen=True, init=False, eq=False, repr=False)
class Config(KeywordRecord):
    """The whole file, a frozen section per table: RUNTIME_TUNABLE keys change by a new object."""
    device: DeviceConfig = field(default_factory=DeviceConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    log: LogConfig = field(default_factory=LogConfig)
    path: str = field(default="", metadata={"internal": True})  # the file it came from

    @property
    def device_id(self) -> str:
        return self.device.id or socket.gethostname()

    @property
    def topic_prefix(self) -> str:
        return self.mqtt.topic_prefix.replace("{device_id}", self.device_id).rstrip("/")

    @property
    def state_dir(self) -> Path:
        return Path(self.model.state_dir)


# Keys `config.set` may change while running; everything else needs a restart.
RUNTIME_TUNABLE = ("input.rate_hz", "telemetry.interval_s", "update.max_bytes_per_s", "update.switch_window")


def _type_name(t: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(t, str(t))


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is DelegateConfig and isinstance(value, str):
        value = {"library": value}  # the plain-string form of v0.2
    if origin is types.UnionType:
        if not isinstance(value, typing.get_args(tp)):
            raise ConfigError(message=f"{key}: expected one of {', '.join(map(_type_name, typing.get_args(tp)))}")
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
            raise ConfigError(message=f"{key}: expected a table of strings")
        return {str(k): str(v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(message=f"{key}: expected a table, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(message=f"{key}: expected a list of {_type_name(item)}s")
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(message=f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(message=f"{key}: expected an integer, got {value!r}")
        return value
    if not isinstance(value, tp):
        raise ConfigError(message=f"{key}: expected a {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, table: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(message=f"{dotted}: unknown key")
        converted = _convert(value, hints[key], dotted)
        check = fields[key].metadata.get("check")
        if check is not None:
            problem = check(converted)
            if problem:
                raise ConfigError(message=f"{dotted}: {problem} (got {value!r})")
        kwargs[key] = converted
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    m = cfg.mqtt
    if (m.tls.cert or m.tls.key) and not (m.tls.cert and m.tls.key):
        raise ConfigError(message="mqtt.tls: cert and key must be given together")
    if m.reconnect_max_s < m.reconnect_min_s:
        raise ConfigError(message="mqtt.reconnect_max_s: must be >= mqtt.reconnect_min_s")
    if cfg.input.source == "images" and not cfg.input.images.dir:
        raise ConfigError(message="input.images.dir: required when input.source = \"images\"")
    if cfg.input.source == "sensor" and cfg.input.sensor.mode == "stream" and not cfg.input.sensor.stream:
        raise ConfigError(message="input.sensor.stream: required when input.sensor.mode = \"stream\"")
    for g in cfg.device.groups:
        if not g or _TOPIC_BAD.search(g) or "/" in g:
            raise ConfigError(message=f"device.groups: bad group name {g!r}")


def from_dict(data: dict, path: str = "") -> Config:
    """Build a Config from a parsed TOML table (also used by tests and `config.set`)."""
    cfg = _build(Config, data)
    cfg = dataclasses.replace(cfg, path=path)
    _cross_checks(cfg)
    return cfg


def load(path: str | os.PathLike | None = None) -> Config:
    """Load and validate the config file; raise ConfigError naming the file and key at fault."""
    p = Path(path or os.environ.get("EDGEAGENT_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError("config.not_found", f"{p}: no such file") from None
    except OSError as e:
        raise ConfigError("config.unreadable", f"{p}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("config.syntax", f"{p}: {e}") from None
    try:
        return from_dict(data, str(p))
    except ConfigError as e:
        raise ConfigError(e.code, f"{p}: {e.message}") from None


def get_key(cfg: Config, dotted: str) -> Any:
    """Read one dotted key (`config.get`)."""
    obj: Any = cfg
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            raise ConfigError("config.unknown_key", f"{dotted}: unknown key")
        obj = getattr(obj, part)
    return to_dict(obj) if dataclasses.is_dataclass(obj) else obj


def with_key(cfg: Config, dotted: str, value: Any) -> Config:
    """Return a copy of cfg with one runtime-tunable key changed, validated like the file."""
    if dotted not in RUNTIME_TUNABLE:
        get_key(cfg, dotted)  # unknown key -> config.unknown_key
        raise ConfigError("config.not_tunable", f"{dotted}: not changeable at run time (restart needed)")
    section, key = dotted.split(".")
    data = to_dict(cfg)
    data[section][key] = value
    return from_dict(data, cfg.path)


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get("internal")}
    return [to_dict(v) for v in obj] if isinstance(obj, list) else obj
