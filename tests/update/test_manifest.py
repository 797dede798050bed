"""The manifest verifier with real Ed25519 keys: every refusal code, key rotation, canonical bytes."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import datetime, timedelta, timezone

import pytest

from edgeagent.errors import EdgeAgentError
from edgeagent.update.canonical import canonical_bytes
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.keys import generate_keypair, keyid, load_private_key, load_public_key, load_trusted_keys
from edgeagent.update.manifest import sign_envelope, verify_envelope

H = "ab" * 32
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def signed(**over):
    s = {"_type": "edgeagent-update", "spec_version": 1, "model": "det", "version": 5,
         "created": "2026-01-01T00:00:00Z", "expires": "2027-01-01T00:00:00Z", "kind": "delta",
         "base": {"version": 4, "sha256": H}, "target": {"sha256": H, "size": 100},
         "payload": {"sha256": H, "size": 10, "format": "bsdiff4", "name": "det-5.bsdiff4"}}
    s.update(over)
    return s


@pytest.fixture
def k(tmp_path):
    out = {}
    for name in ("old", "new", "stranger"):
        generate_keypair(tmp_path / name)
        out[name] = load_private_key(tmp_path / name / "edgeagent.key")
    out["dir"] = tmp_path
    return out


def trust(*keys):
    return {keyid(x.public_key()): x.public_key() for x in keys}


def verify(env, trusted, threshold=1, highest=4, model="det"):
    return verify_envelope(json.dumps(env), trusted=trusted, threshold=threshold, model_name=model,
                           highest_version=highest, now=NOW)


def code(fn) -> str:
    with pytest.raises(UpdateRejected) as ei:
        fn()
    return ei.value.code


def test_a_good_manifest_verifies_to_a_typed_object(k):
    m = verify(sign_envelope(signed(), [k["old"]]), trust(k["old"]))
    assert (m.model, m.version, m.kind, m.base.sha256, m.payload.format) == ("det", 5, "delta", H, "bsdiff4")


def test_signature_refusals(k):
    env = sign_envelope(signed(), [k["old"]])
    bad = json.loads(json.dumps(env))
    sig = bytearray(base64.b64decode(bad["signatures"][0]["sig"]))
    sig[10] ^= 1
    bad["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    assert code(lambda: verify(bad, trust(k["old"]))) == "update.bad_signature"
    changed = json.loads(json.dumps(env))
    changed["signed"]["version"] = 6  # signature over different bytes
    assert code(lambda: verify(changed, trust(k["old"]))) == "update.bad_signature"
    assert code(lambda: verify(sign_envelope(signed(), [k["stranger"]]), trust(k["old"]))) == "update.unknown_key"
    assert code(lambda: verify(env, trust(k["old"], k["new"]), threshold=2)) == "update.threshold"
    # the same key twice counts once
    twice = {"signed": env["signed"], "signatures": env["signatures"] * 2}
    assert code(lambda: verify(twice, trust(k["old"], k["new"]), threshold=2)) == "update.threshold"


def test_key_rotation(k):
    both = sign_envelope(signed(), [k["old"], k["new"]])
    assert verify(both, trust(k["new"])).version == 5  # devices that already trust only the new key
    assert verify(both, trust(k["old"], k["new"]), threshold=2).version == 5
    assert verify(both, trust(k["old"])).version == 5  # devices not yet rotated
    retired = sign_envelope(signed(), [k["new"]])
    assert code(lambda: verify(retired, trust(k["old"]))) == "update.unknown_key"


def test_expiry_model_and_anti_rollback(k):
    t = trust(k["old"])
    assert code(lambda: verify(sign_envelope(signed(expires="2026-05-31T23:59:59Z"), [k["old"]]), t)) == "update.expired"
    assert code(lambda: verify(sign_envelope(signed(), [k["old"]]), t, model="other")) == "update.wrong_model"
    assert code(lambda: verify(sign_envelope(signed(version=3), [k["old"]]), t, highest=4)) == "update.downgrade"
    assert code(lambda: verify(sign_envelope(signed(version=4), [k["old"]]), t, highest=4)) == "update.replay"
    assert verify(sign_envelope(signed(version=4), [k["old"]]), t, highest=None).version == 4


MALFORMED = [
    ({"version": "5"}, "signed.version"),
    ({"version": 0}, "signed.version"),
    ({"version": True}, "signed.version"),
    ({"model": "bad name"}, "signed.model"),
    ({"model": "x" * 65}, "signed.model"),
    ({"_type": "other"}, "signed._type"),
    ({"spec_version": 2}, "signed.spec_version"),
    ({"kind": "patch"}, "signed.kind"),
    ({"created": "yesterday"}, "signed.created"),
    ({"expires": "2027-13-01T00:00:00Z"}, "signed.expires"),
    ({"base": {"version": 4}}, "signed.base.sha256"),
    ({"base": {"version": 4, "sha256": "XYZ"}}, "signed.base.sha256"),
    ({"target": {"sha256": H, "size": -1}}, "signed.target.size"),
    ({"target": {"sha256": H}}, "signed.target.size"),
    ({"payload": {"sha256": H, "size": 10, "format": "zip", "name": "p"}}, "signed.payload.format"),
    ({"payload": {"sha256": H, "size": 10, "format": "raw", "name": "p"}}, "signed.payload.format"),
    ({"payload": {"sha256": H, "size": 10, "format": "bsdiff4", "name": "../etc/passwd"}}, "signed.payload.name"),
    ({"health": {"probation_s": -5}}, "signed.health.probation_s"),
    ({"health": {"min_inferences": "many"}}, "signed.health.min_inferences"),
    ({"io": {"inputs": [{"shape": "1x2", "dtype": "float32"}], "outputs": []}}, "signed.io"),
    ({"surprise": 1}, "signed.surprise: unknown field"),
    ({"created": "2027-02-01T00:00:00Z"}, "signed.created: after signed.expires"),
    ({"health": {"probation_s": 86401}}, "signed.health.probation_s: at most 86400"),
    ({"health": {"min_agreement_pct": 0}}, "signed.health.min_agreement_pct"),
    ({"health": {"min_agreement_pct": 101}}, "signed.health.min_agreement_pct"),
    ({"health": {"golden": {"npz_b64": "!!", "min_pass_pct": 90}}}, "signed.health.golden.npz_b64"),
    ({"health": {"golden": {"npz_b64": base64.b64encode(b"not a zip").decode(), "min_pass_pct": 90}}},
     "signed.health.golden.npz_b64: not an .npz"),
    ({"health": {"golden": {"npz_b64": base64.b64encode(b"PK..").decode(), "min_pass_pct": 0}}},
     "signed.health.golden.min_pass_pct"),
    ({"health": {"golden": {"npz_b64": "A" * 400_000, "min_pass_pct": 90}}}, "larger than"),
]


@pytest.mark.parametrize("over, fragment", MALFORMED)
def test_malformed_fields(k, over, fragment):
    env = sign_envelope(signed(**over), [k["old"]])
    with pytest.raises(UpdateRejected) as ei:
        verify(env, trust(k["old"]))
    assert ei.value.code == "update.malformed" and fragment in ei.value.message


def test_full_update_has_no_base(k):
    s = signed(kind="full", payload={"sha256": H, "size": 10, "format": "raw", "name": "det-5.tflite"})
    assert code(lambda: verify(sign_envelope(s, [k["old"]]), trust(k["old"]))) == "update.malformed"
    del s["base"]
    assert verify(sign_envelope(s, [k["old"]]), trust(k["old"])).base is None


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"signed": {}}', b'{"signed": 1, "signatures": []}',
                                 b"{" + b'"a":' * 10 + b"1", b"x" * 70000])
def test_garbage_envelopes(k, raw):
    with pytest.raises(UpdateRejected) as ei:
        verify_envelope(raw, trusted=trust(k["old"]), threshold=1, model_name="det", highest_version=None)
    assert ei.value.code == "update.malformed"


def test_canonical_bytes():
    assert canonical_bytes({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_bytes({"x": 1.5})


def test_keygen_files_modes_and_no_overwrite(tmp_path):
    kid = generate_keypair(tmp_path / "k")
    priv, pub = tmp_path / "k/edgeagent.key", tmp_path / "k/edgeagent.pub"
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert priv.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert keyid(load_public_key(pub)) == kid and len(kid) == 64
    with pytest.raises(EdgeAgentError) as ei:
        generate_keypair(tmp_path / "k")
    assert ei.value.code == "keys.exists"
    assert list(load_trusted_keys([str(tmp_path / "k")])) == [kid]  # a directory of keys
    (tmp_path / "bad.pub").write_text("nope")
    with pytest.raises(EdgeAgentError) as ei:
        load_trusted_keys([str(tmp_path / "bad.pub")])
    assert ei.value.code == "keys.invalid" and "bad.pub" in str(ei.value)


def test_a_clock_below_the_time_floor_decides_expiry_against_the_floor(k):
    """A Pi without RTC boots in 1970: an expired manifest must not look fresh."""
    t = trust(k["old"])
    expired = sign_envelope(signed(expires="2026-03-01T00:00:00Z"), [k["old"]])
    fresh = sign_envelope(signed(), [k["old"]])
    y1970 = datetime(1970, 1, 1, 0, 1, tzinfo=timezone.utc)
    floor = datetime(2026, 5, 1, tzinfo=timezone.utc)

    def at(env, now, time_floor):
        return verify_envelope(json.dumps(env), trusted=t, threshold=1, model_name="det", highest_version=4,
                               now=now, time_floor=time_floor)

    # without a floor the 1970 clock would accept it
    assert at(expired, y1970, None).version == 5
    with pytest.raises(UpdateRejected) as ei:
        at(expired, y1970, floor)
    assert ei.value.code == "update.clock_unsynced" and "1970-01-01" in ei.value.message
    # a manifest that is valid at the floor is accepted: the floor is a time known to have passed
    assert at(fresh, y1970, floor).version == 5
    # with a sane clock the ordinary rule applies
    assert code(lambda: at(expired, NOW, floor)) == "update.expired"


def test_the_installer_keeps_the_time_floor_across_a_clock_jump(tmp_path, k):
    """End to end through the Installer's check step and the persisted floor file."""
    from edgeagent import config as config_mod
    from edgeagent.state.store import SlotStore
    from edgeagent.state.timefloor import TimeFloor
    from edgeagent.update.installer import Installer

    cfg = config_mod.from_dict({"model": {"name": "det", "state_dir": str(tmp_path / "state")},
                                "update": {"trusted_keys": [str(k["dir"] / "old" / "edgeagent.pub")]}})
    (tmp_path / "state").mkdir()
    store = SlotStore(cfg.state_dir)
    clock = {"now": datetime(2026, 6, 1, tzinfo=timezone.utc)}
    inst = Installer(cfg, store, emit=lambda *a, **kw: None, clock=lambda: clock["now"])
    full = {"kind": "full", "payload": {"sha256": H, "size": 10, "format": "raw", "name": "det.tflite"}}
    s = signed(**full)
    s.pop("base")
    assert inst.check(sign_envelope(s, [k["old"]])).version == 5
    assert TimeFloor(cfg.state_dir).get() == clock["now"]
    # the device reboots without RTC: 1970, and an expired manifest arrives
    clock["now"] = datetime(1970, 1, 1, tzinfo=timezone.utc)
    old = dict(s, version=6, expires="2026-05-01T00:00:00Z")
    with pytest.raises(UpdateRejected) as ei:
        inst.check(sign_envelope(old, [k["old"]]))
    assert ei.value.code == "update.clock_unsynced"


# -- issue 9, point 10: the verifier's edges ------------------------------------------------------

def test_deep_nesting_is_refused_with_its_own_code_not_a_recursion_error(k):
    deep = "[" * 50000 + "]" * 50000
    raw = '{"signed": ' + deep + ', "signatures": []}'
    with pytest.raises(UpdateRejected) as e:
        verify_envelope(raw, trusted=trust(k["old"]), threshold=1, model_name="det", highest_version=4, now=NOW)
    assert e.value.code == "update.too_deep"
    # an already-parsed document (what the MQTT dispatcher hands over) too
    doc: list = []
    cur = doc
    for _ in range(40):
        cur.append([])
        cur = cur[0]
    with pytest.raises(UpdateRejected) as e:
        verify_envelope({"signed": {"x": doc}, "signatures": []}, trusted=trust(k["old"]), threshold=1,
                        model_name="det", highest_version=4, now=NOW)
    assert e.value.code == "update.too_deep"


@pytest.mark.parametrize("number", ["1e999", "-1e999", "NaN", "Infinity", "1" * 5000, str(2**64)])
def test_numbers_out_of_range_are_refused(k, number):
    env = sign_envelope(signed(), [k["old"]])
    raw = json.dumps(env).replace('"version": 5', f'"version": {number}')
    assert code(lambda: verify_envelope(raw, trusted=trust(k["old"]), threshold=1, model_name="det",
                                        highest_version=4, now=NOW)) == "update.number_range"


def test_a_signed_huge_probation_is_refused_not_an_overflow(k):
    env = sign_envelope(signed(health={"probation_s": 10**400}), [k["old"]])
    assert code(lambda: verify(env, trust(k["old"]))) in ("update.number_range", "update.malformed")


@pytest.mark.parametrize("field", ["target", "payload", "base"])
def test_a_trailing_newline_in_a_sha256_is_refused(k, field):
    s = signed()
    s[field] = {**s[field], "sha256": H + "\n"}
    assert code(lambda: verify(sign_envelope(s, [k["old"]]), trust(k["old"]))) == "update.malformed"


def test_a_trailing_newline_in_names_is_refused(k):
    assert code(lambda: verify(sign_envelope(signed(model="det\n"), [k["old"]]), trust(k["old"]),
                               model="det\n")) == "update.malformed"
    s = signed()
    s["payload"] = {**s["payload"], "name": "det-5.bsdiff4\n"}
    assert code(lambda: verify(sign_envelope(s, [k["old"]]), trust(k["old"]))) == "update.malformed"
    assert code(lambda: verify(sign_envelope(signed(created="2026-01-01T00:00:00Z\n"), [k["old"]]),
                               trust(k["old"]))) == "update.malformed"


def test_the_verify_cli_prints_one_line_for_a_deep_manifest(tmp_path, k):
    import subprocess
    import sys

    p = tmp_path / "deep.json"
    p.write_text('{"signed": ' + "[" * 20000 + "]" * 20000 + ', "signatures": []}')
    r = subprocess.run([sys.executable, "-m", "edgeagent", "verify", str(p), "--pubkey", str(k["dir"] / "old" / "edgeagent.pub")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "update.too_deep" in r.stderr, r.stderr
