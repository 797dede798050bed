"""The signed update manifest: a pure verifier, TUF style.

`verify_envelope` takes untrusted bytes plus what the device already trusts (keys, threshold,
its model name, the highest version it ever installed) and returns a typed, verified Manifest
or raises UpdateRejected with a stable code. Signatures are checked before any field of
`signed` is believed; nothing is written anywhere.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from edgeagent.state import labels, reference
from edgeagent.update import golden
from edgeagent.update.golden import Golden
from edgeagent.update.canonical import canonical_bytes
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.keys import keyid
from edgeagent.update.untrusted import MAX_ENVELOPE_BYTES, MAX_INT, _check_tree, load_untrusted  # noqa: F401

if TYPE_CHECKING:  # cryptography itself is imported when a signature is checked (update/keys.py)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAX_PROBATION_S = 86400
TYPE = "edgeagent-update"
SPEC_VERSION = 1
# \A...\Z, not ^...$: `$` also matches before a trailing newline, so "abc…\n" passed as a sha256
_NAME = re.compile(r"\A[A-Za-z0-9._-]{1,64}\Z")
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_TIME = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
_FILE = re.compile(r"\A[A-Za-z0-9._-]{1,128}\Z")
_RID = re.compile(r"\A[0-9a-f]{16}\Z")
MAX_RECIPIENTS = 10000


@dataclass(frozen=True)
class BaseRef:
    version: int
    sha256: str


@dataclass(frozen=True)
class Target:
    sha256: str
    size: int


@dataclass(frozen=True)
class Encryption:
    """signed.payload.encryption: the payload is age-encrypted (update/encryption.py); sha256 and
    size of the payload are the ciphertext's, `size` here the plaintext's."""

    format: str  # "age"
    size: int
    recipients: tuple[str, ...]  # recipient ids (encryption.recipient_id)


@dataclass(frozen=True)
class Payload:
    sha256: str
    size: int
    format: str  # "bsdiff4" | "raw"
    name: str
    encryption: Encryption | None = None


@dataclass(frozen=True)
class HealthOverrides:
    probation_s: float | None = None
    max_latency_ms: float | None = None
    min_inferences: int | None = None
    min_agreement_pct: int | None = None
    golden: Golden | None = None


@dataclass(frozen=True)
class Manifest:
    model: str
    version: int
    created: str
    expires: str
    kind: str  # "delta" | "full"
    base: BaseRef | None
    target: Target
    payload: Payload
    health: HealthOverrides | None
    io: dict | None
    signed: dict
    labels: tuple[str, ...] | None = None  # the target model's labels (signed.labels), stored beside it
    monitor: Any = None  # the target's quality reference (signed.monitor, state.reference.Reference)
    requires: dict | None = None  # {"delegate": NAME}: what the device must have to take it
    not_before: str | None = None  # RFC 3339 UTC: downloaded and checked at once, switched to only after it


def _bad(msg: str) -> UpdateRejected:
    return UpdateRejected("update.malformed", msg)


def _obj(d: Any, path: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(d, dict):
        raise _bad(f"{path}: expected an object")
    missing = required - set(d)
    if missing:
        raise _bad(f"{path}.{sorted(missing)[0]}: required")
    extra = set(d) - required - set(optional)
    if extra:
        raise _bad(f"{path}.{sorted(extra)[0]}: unknown field")
    return d


def _int(v: Any, path: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _bad(f"{path}: expected integer >= {lo}")
    if v > MAX_INT:
        raise UpdateRejected("update.number_range", f"{path}: above {MAX_INT}")
    return v


def _num(v: Any, path: str, lo: float = 0, strict: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo or (strict and v == lo):
        raise _bad(f"{path}: expected number {'>' if strict else '>='} {lo}")
    if v > MAX_INT or v != v:
        raise UpdateRejected("update.number_range", f"{path}: out of range")
    return float(v)


def _str(v: Any, path: str, pattern: re.Pattern, what: str) -> str:
    if not isinstance(v, str) or not pattern.match(v):
        raise _bad(f"{path}: expected {what}")
    return v


def _time(v: Any, path: str) -> datetime:
    _str(v, path, _TIME, "RFC 3339 UTC time YYYY-MM-DDTHH:MM:SSZ")
    try:
        return datetime.strptime(v, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        raise _bad(f"{path}: not a valid date") from None


def _io(v: Any, path: str) -> dict:
    d = _obj(v, path, {"inputs", "outputs"})
    for side in ("inputs", "outputs"):
        if not isinstance(d[side], list) or not d[side]:
            raise _bad(f"{path}.{side}: expected a non-empty list")
        for i, t in enumerate(d[side]):
            t = _obj(t, f"{path}.{side}[{i}]", {"shape", "dtype"}, {"name"})
            if not isinstance(t["shape"], list) or not all(isinstance(x, int) and not isinstance(x, bool) and x >= -1 for x in t["shape"]):
                raise _bad(f"{path}.{side}[{i}].shape: expected a list of integers")
            if not isinstance(t["dtype"], str):
                raise _bad(f"{path}.{side}[{i}].dtype: expected a string")
    return d


def _pure(parse: Any, v: Any, path: str) -> Any:
    """A part parsed by its own pure module (labels, the quality reference); its ValueError, one line."""
    try:
        return parse(v)
    except ValueError as e:
        raise _bad(str(e) if str(e).startswith(path) else f"{path}: {e}") from None


def parse_signed(s: Any) -> Manifest:
    """Strict schema of `signed` (only called on signature-verified data)."""
    s = _obj(s, "signed", {"_type", "spec_version", "model", "version", "created", "expires", "kind", "target", "payload"},
             {"base", "health", "io", "labels", "monitor", "requires", "not_before"})
    if s["_type"] != TYPE:
        raise _bad(f"signed._type: expected {TYPE!r}")
    if s["spec_version"] != SPEC_VERSION or isinstance(s["spec_version"], bool):
        raise _bad(f"signed.spec_version: expected {SPEC_VERSION}")
    model = _str(s["model"], "signed.model", _NAME, "a name matching [A-Za-z0-9._-]{1,64}")
    version = _int(s["version"], "signed.version", 1)
    if _time(s["created"], "signed.created") > _time(s["expires"], "signed.expires"):
        raise _bad("signed.created: after signed.expires")
    kind = s["kind"]
    if kind not in ("delta", "full"):
        raise _bad("signed.kind: expected \"delta\" or \"full\"")
    base = None
    if kind == "delta":
        if "base" not in s:
            raise _bad("signed.base: required for a delta")
        b = _obj(s["base"], "signed.base", {"version", "sha256"})
        base = BaseRef(_int(b["version"], "signed.base.version", 1), _str(b["sha256"], "signed.base.sha256", _HEX64, "64 lower-case hex digits"))
    elif "base" in s:
        raise _bad("signed.base: not allowed for a full update")
    t = _obj(s["target"], "signed.target", {"sha256", "size"})
    target = Target(_str(t["sha256"], "signed.target.sha256", _HEX64, "64 lower-case hex digits"), _int(t["size"], "signed.target.size", 1))
    p = _obj(s["payload"], "signed.payload", {"sha256", "size", "format", "name"}, {"encryption"})
    fmt = p["format"]
    if fmt not in ("bsdiff4", "raw"):
        raise _bad("signed.payload.format: expected \"bsdiff4\" or \"raw\"")
    if (kind == "delta") != (fmt == "bsdiff4"):
        raise _bad("signed.payload.format: a delta is bsdiff4, a full update is raw")
    name = p["name"]
    if not isinstance(name, str) or not _FILE.match(name) or name in (".", ".."):
        raise _bad("signed.payload.name: expected a plain file name")
    payload = Payload(_str(p["sha256"], "signed.payload.sha256", _HEX64, "64 lower-case hex digits"),
                      _int(p["size"], "signed.payload.size", 1), fmt, name,
                      _encryption(p["encryption"]) if "encryption" in p else None)
    health = None
    if "health" in s:
        h = _obj(s["health"], "signed.health", set(),
                 {"probation_s", "max_latency_ms", "min_inferences", "min_agreement_pct", "golden"})
        agree = _int(h["min_agreement_pct"], "signed.health.min_agreement_pct", 1) if "min_agreement_pct" in h else None
        if agree is not None and agree > 100:
            raise _bad("signed.health.min_agreement_pct: expected 1 to 100")
        probation = _num(h["probation_s"], "signed.health.probation_s") if "probation_s" in h else None
        if probation is not None and probation > MAX_PROBATION_S:
            raise _bad(f"signed.health.probation_s: at most {MAX_PROBATION_S} (a day)")
        health = HealthOverrides(
            probation,
            _num(h["max_latency_ms"], "signed.health.max_latency_ms", strict=True) if "max_latency_ms" in h else None,
            _int(h["min_inferences"], "signed.health.min_inferences") if "min_inferences" in h else None,
            agree,
            _pure(golden.parse, h["golden"], "signed.health.golden") if "golden" in h else None,
        )
    io = _io(s["io"], "signed.io") if "io" in s else None
    names = _pure(labels.from_signed, s["labels"], "signed.labels") if "labels" in s else None
    monitor = _pure(reference.parse, s["monitor"], "signed.monitor") if "monitor" in s else None
    requires = None
    if "requires" in s:
        r = _obj(s["requires"], "signed.requires", set(), {"delegate"})
        requires = {"delegate": _str(r["delegate"], "signed.requires.delegate", _NAME, "a delegate name")} if r else {}
    not_before = s.get("not_before")
    if not_before is not None:
        _time(not_before, "signed.not_before")
    return Manifest(model, version, s["created"], s["expires"], kind, base, target, payload, health, io, s, names,
                    monitor, requires, not_before)


def _encryption(v: Any) -> Encryption:
    e = _obj(v, "signed.payload.encryption", {"format", "size", "recipients"})
    if e["format"] != "age":
        raise _bad("signed.payload.encryption.format: expected \"age\"")
    rs = e["recipients"]
    if not isinstance(rs, list) or not 1 <= len(rs) <= MAX_RECIPIENTS:
        raise _bad(f"signed.payload.encryption.recipients: expected a list of 1 to {MAX_RECIPIENTS} recipient ids")
    return Encryption("age", _int(e["size"], "signed.payload.encryption.size", 1),
                      tuple(_str(r, "signed.payload.encryption.recipients[]", _RID, "16 lower-case hex digits")
                            for r in rs))


def _check_signatures(env: dict, trusted: dict[str, Ed25519PublicKey], threshold: int) -> None:
    from cryptography.exceptions import InvalidSignature

    sigs = env["signatures"]
    if not isinstance(sigs, list) or not sigs:
        raise _bad("signatures: expected a non-empty list")
    try:
        msg = canonical_bytes(env["signed"])
    except ValueError as e:
        raise _bad(str(e)) from None
    valid: set[str] = set()
    bad_trusted = 0
    for i, sig in enumerate(sigs):
        sig = _obj(sig, f"signatures[{i}]", {"keyid", "sig"})
        kid = sig["keyid"]
        if not isinstance(kid, str) or not isinstance(sig["sig"], str):
            raise _bad(f"signatures[{i}]: keyid and sig must be strings")
        key = trusted.get(kid)
        if key is None:
            continue
        try:
            raw = base64.b64decode(sig["sig"], validate=True)
            key.verify(raw, msg)
        except (InvalidSignature, binascii.Error, ValueError):
            bad_trusted += 1
            continue
        valid.add(kid)
    if len(valid) >= threshold:
        return
    if bad_trusted:
        raise UpdateRejected("update.bad_signature", f"{bad_trusted} signature(s) from trusted keys do not verify")
    if not valid:
        raise UpdateRejected("update.unknown_key", "no signature is from a trusted key")
    raise UpdateRejected("update.threshold", f"{len(valid)} valid signature(s) from trusted keys, {threshold} needed")


def verify_envelope(raw: bytes | str | dict, *, trusted: dict[str, Ed25519PublicKey], threshold: int,
                    model_name: str, highest_version: int | None, now: datetime | None = None,
                    time_floor: datetime | None = None) -> Manifest:
    """Untrusted envelope + what we trust -> a verified Manifest, or UpdateRejected.

    time_floor: a time the device knows has passed (the newest `created` it verified, the last
    wall time it saw). A wall clock below it is unsynchronised (a Pi without RTC boots in 1970):
    expiry is then decided against the floor, never against the wrong clock."""
    if isinstance(raw, (bytes, str)):
        env = load_untrusted(raw)
    else:
        env = raw
        _check_tree(env)  # before json.dumps, which recurses too
        try:
            size = len(json.dumps(env, allow_nan=False))
        except (ValueError, TypeError) as e:
            raise _bad(f"manifest is not JSON: {e}") from None
        if size > MAX_ENVELOPE_BYTES:
            raise _bad(f"manifest is larger than {MAX_ENVELOPE_BYTES} bytes")
    env = _obj(env, "envelope", {"signed", "signatures"})
    if not isinstance(env["signed"], dict):
        raise _bad("signed: expected an object")
    _check_signatures(env, trusted, threshold)
    m = parse_signed(env["signed"])
    if m.model != model_name:
        raise UpdateRejected("update.wrong_model", f"manifest is for model {m.model!r}, this device runs {model_name!r}")
    now = now or datetime.now(timezone.utc)
    expires = _time(m.expires, "signed.expires")
    if time_floor is not None and now < time_floor:
        if expires <= time_floor:
            raise UpdateRejected("update.clock_unsynced",
                                 f"the clock reads {now:%Y-%m-%dT%H:%M:%SZ}, before {time_floor:%Y-%m-%dT%H:%M:%SZ} "
                                 f"that this device has already seen, and the manifest expired at {m.expires}")
    elif expires <= now:
        raise UpdateRejected("update.expired", f"manifest expired at {m.expires}")
    if highest_version is not None:
        if m.version < highest_version:
            raise UpdateRejected("update.downgrade", f"version {m.version} is below the highest installed, {highest_version}")
        if m.version == highest_version:
            raise UpdateRejected("update.replay", f"version {m.version} is already installed")
    return m


def sign_envelope(signed: dict, keys: list[Ed25519PrivateKey]) -> dict:
    msg = canonical_bytes(signed)
    return {"signed": signed, "signatures": [
        {"keyid": keyid(k.public_key()), "sig": base64.b64encode(k.sign(msg)).decode()} for k in keys]}
