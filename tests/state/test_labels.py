"""Label files and signed labels: strict parsing, one canonical form, a hash that binds them."""

from __future__ import annotations

import pytest

from edgeagent.errors import EdgeAgentError
from edgeagent.state import labels
from edgeagent.update.manifest import parse_signed


def test_a_label_file_parses_to_one_canonical_form():
    assert labels.parse("cat\r\ndog\n bird \n") == ("cat", "dog", "bird")
    assert labels.parse(b"cat\ndog") == ("cat", "dog")
    assert labels.text_of(("cat", "dog")) == "cat\ndog\n"
    assert labels.digest(labels.parse("cat\r\ndog\r\n")) == labels.digest(("cat", "dog"))


@pytest.mark.parametrize("raw,why", [(b"", "no labels"), (b"\xff\xfe", "not UTF-8"), (b"a\x00b\n", "control"),
                                     (b"x\n" * 40000, "bytes, more than")])
def test_what_is_no_label_file_is_refused_in_one_line(raw, why):
    with pytest.raises(labels.LabelsError, match=why):
        labels.parse(raw)


def test_classes_are_judged_on_a_classifiers_output_only():
    assert labels.classes([1, 1001]) == 1001 and labels.classes([1, 10, 4]) is None
    assert labels.mismatch(("a", "b"), [1, 3]) == "2 labels for output 0 of shape [1, 3] (3 classes)"
    assert labels.mismatch(("a", "b"), [1, 10, 4]) is None


def _signed(lab: dict) -> dict:
    return {"_type": "edgeagent-update", "spec_version": 1, "model": "m", "version": 2, "created": "2026-01-01T00:00:00Z",
            "expires": "2027-01-01T00:00:00Z", "kind": "full", "target": {"sha256": "a" * 64, "size": 10},
            "payload": {"sha256": "a" * 64, "size": 10, "format": "raw", "name": "m-2.tflite"}, "labels": lab}


def test_signed_labels_must_hash_to_their_names():
    names = ["cat", "dog"]
    m = parse_signed(_signed({"names": names, "sha256": labels.digest(names)}))
    assert m.labels == ("cat", "dog")
    for bad in ({"names": names, "sha256": labels.digest(["cat", "dot"])}, {"names": "cat\ndog", "sha256": "0" * 64},
                {"names": [" cat", "dog"], "sha256": labels.digest(names)}, {"names": names}):
        with pytest.raises(EdgeAgentError) as e:
            parse_signed(_signed(bad))
        assert e.value.code == "update.malformed" and "signed.labels" in e.value.message
