"""Encrypted payloads (age through pyrage): the device decrypts while it patches, as a stream,
and builds exactly the target; the wrong identity, a tampered ciphertext and a malformed
`signed.payload.encryption` are each refused with their own code."""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import bsdiff4
import pyrage
import pytest

from edgeagent.engine import testmodels
from edgeagent.update.encryption import DecryptingReader, Identity, encrypt_file, generate_identity, recipient_id
from edgeagent.update.errors import UpdateRejected
from edgeagent.update.keys import generate_keypair
from edgeagent.update.manifest import parse_signed, verify_envelope
from edgeagent.update.keys import load_trusted_keys
from edgeagent.update.patch import apply_delta, copy_full
from edgeagent.update.release import make_release


@pytest.fixture
def device(tmp_path) -> Identity:
    generate_identity(tmp_path / "device.age")
    assert (tmp_path / "device.age").stat().st_mode & 0o777 == 0o400
    return Identity.load(tmp_path / "device.age")


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_an_encrypted_patch_is_decrypted_while_it_is_applied_byte_for_byte(tmp_path, device):
    rnd = random.Random(7)
    old = rnd.randbytes(3_000_000)
    new = bytearray(old)
    new[1000:1000] = rnd.randbytes(5000)  # an inserted block: diff and extra blocks both in use
    for p in range(0, len(new), 97_000):
        new[p] ^= 0x5A
    new = bytes(new)
    (tmp_path / "old").write_bytes(old)
    patch = bsdiff4.diff(old, new)
    (tmp_path / "patch").write_bytes(patch)
    encrypt_file(tmp_path / "patch", tmp_path / "patch.age", [device.recipient])
    assert patch[:1000] not in (tmp_path / "patch.age").read_bytes()
    before = threading.active_count()
    apply_delta(tmp_path / "old", _sha(old), tmp_path / "patch.age", tmp_path / "out", target_sha256=_sha(new),
                target_size=len(new), identity=device, plain_size=len(patch))
    assert (tmp_path / "out").read_bytes() == new
    assert threading.active_count() == before  # every decrypting stream ended


def test_an_encrypted_full_payload_goes_straight_into_the_slot(tmp_path, device):
    data = random.Random(3).randbytes(2_500_000)
    (tmp_path / "m").write_bytes(data)
    encrypt_file(tmp_path / "m", tmp_path / "m.age", [device.recipient])
    copy_full(tmp_path / "m.age", tmp_path / "slot", target_sha256=_sha(data), target_size=len(data), identity=device)
    assert (tmp_path / "slot").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.age", "m", "m.age", "slot"]  # no plaintext left


def test_the_wrong_identity_and_a_tampered_ciphertext_are_refused_and_nothing_is_left(tmp_path, device):
    data = random.Random(4).randbytes(400_000)
    (tmp_path / "m").write_bytes(data)
    other = pyrage.x25519.Identity.generate()
    encrypt_file(tmp_path / "m", tmp_path / "other.age", [str(other.to_public())])
    with pytest.raises(UpdateRejected) as e:
        copy_full(tmp_path / "other.age", tmp_path / "slot", target_sha256=_sha(data), target_size=len(data),
                  identity=device)
    assert e.value.code == "update.not_for_this_device"
    encrypt_file(tmp_path / "m", tmp_path / "m.age", [device.recipient])
    ct = bytearray((tmp_path / "m.age").read_bytes())
    ct[len(ct) // 2] ^= 1
    (tmp_path / "bad.age").write_bytes(bytes(ct))
    with pytest.raises(UpdateRejected) as e:
        copy_full(tmp_path / "bad.age", tmp_path / "slot", target_sha256=_sha(data), target_size=len(data),
                  identity=device)
    assert e.value.code == "update.decrypt_failed"
    assert not (tmp_path / "slot").exists() and not list(tmp_path.glob(".slot*"))
    # a delta whose ciphertext was altered: the same code from the patcher's streams
    (tmp_path / "old").write_bytes(data)
    patch = bsdiff4.diff(data, data[::-1])
    (tmp_path / "p").write_bytes(patch)
    encrypt_file(tmp_path / "p", tmp_path / "p.age", [device.recipient])
    ct = bytearray((tmp_path / "p.age").read_bytes())
    ct[-40] ^= 1
    (tmp_path / "p.age").write_bytes(bytes(ct))
    with pytest.raises(UpdateRejected) as e:
        apply_delta(tmp_path / "old", _sha(data), tmp_path / "p.age", tmp_path / "slot2", target_sha256=_sha(data[::-1]),
                    target_size=len(data), identity=device, plain_size=len(patch))
    assert e.value.code == "update.decrypt_failed"
    assert not (tmp_path / "slot2").exists()


def test_a_reader_closed_early_stops_its_decrypting_thread(tmp_path, device):
    (tmp_path / "m").write_bytes(random.Random(5).randbytes(8_000_000))
    encrypt_file(tmp_path / "m", tmp_path / "m.age", [device.recipient])
    before = threading.active_count()
    r = DecryptingReader(tmp_path / "m.age", device, offset=1_000_000)
    assert r.read(10) == (tmp_path / "m").read_bytes()[1_000_000:1_000_010]
    r.close()
    assert threading.active_count() == before


def test_release_encrypts_to_recipients_and_the_manifest_names_them(tmp_path, device):
    generate_keypair(tmp_path / "k")
    v1 = testmodels.write_model(tmp_path / "v1.tflite", kind="dense", input_shape=(1, 64), outputs=8, seed=1)
    v2 = testmodels.write_model(tmp_path / "v2.tflite", kind="dense", input_shape=(1, 64), outputs=8, seed=1,
                                version_tag=2)
    other = str(pyrage.x25519.Identity.generate().to_public())
    rel = make_release(keys=[str(tmp_path / "k/edgeagent.key")], target=v2, base=v1, model="m", version=2,
                       out_dir=tmp_path / "rel", encrypt_to=[device.recipient, other])
    m = verify_envelope(Path(rel["manifest"]).read_bytes(), trusted=load_trusted_keys([str(tmp_path / "k/edgeagent.pub")]),
                        threshold=1, model_name="m", highest_version=None)
    ct = Path(rel["payload"]).read_bytes()
    assert rel["payload"].endswith(".bsdiff4.age") and ct.startswith(b"age-encryption.org/v1\n")
    assert m.payload.sha256 == _sha(ct) and m.payload.size == len(ct)  # the ciphertext is what is signed
    assert set(m.payload.encryption.recipients) == {device.id, recipient_id(other)}
    (tmp_path / "slot").parent.mkdir(exist_ok=True)
    apply_delta(v1, _sha(v1.read_bytes()), Path(rel["payload"]), tmp_path / "slot", target_sha256=m.target.sha256,
                target_size=m.target.size, identity=device, plain_size=m.payload.encryption.size)
    assert (tmp_path / "slot").read_bytes() == v2.read_bytes()


@pytest.mark.parametrize("enc,why", [
    ({"format": "gpg", "size": 1, "recipients": ["0" * 16]}, "encryption.format"),
    ({"format": "age", "size": 0, "recipients": ["0" * 16]}, "encryption.size"),
    ({"format": "age", "size": 5, "recipients": []}, "encryption.recipients"),
    ({"format": "age", "size": 5, "recipients": ["age1xyz"]}, "encryption.recipients"),
    ({"format": "age", "size": 5}, "encryption.recipients"),
])
def test_a_malformed_encryption_block_is_refused_as_malformed(enc, why):
    signed = {"_type": "edgeagent-update", "spec_version": 1, "model": "m", "version": 2,
              "created": "2026-01-01T00:00:00Z", "expires": "2027-01-01T00:00:00Z", "kind": "full",
              "target": {"sha256": "a" * 64, "size": 5},
              "payload": {"sha256": "b" * 64, "size": 9, "format": "raw", "name": "m.age", "encryption": enc}}
    with pytest.raises(UpdateRejected) as e:
        parse_signed(signed)
    assert e.value.code == "update.malformed" and why in e.value.message
