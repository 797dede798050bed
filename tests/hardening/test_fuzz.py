"""Issue 9: hypothesis fuzzing of the two parsers every start and every message goes through.

The topic router takes any string from the broker; the state loader takes any bytes a power cut,
bit rot or a bad manual edit can leave. Neither may raise anything but the project's own errors,
and a start from any state file serves a model that verifies or refuses with a StateError."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeagent.errors import StateError
from edgeagent.state.atomic import sha256_file
from edgeagent.state.store import SlotStore, State
from edgeagent.transport.topics import Chunk, Command, reply_topic_ok, route

pytestmark = pytest.mark.long(seconds=25)

P = "edgeagent/dev1"
pieces = st.sampled_from(["edgeagent", "dev1", "transfer", "cmd", "reply", "group", "lab", "x", "", "0", "17",
                          "\u00b2", "\u0663", "9" * 40, "+", "#", "..", "-1", " 1", "1 ", "\x00"])
topics = st.one_of(st.text(max_size=200), st.lists(st.one_of(pieces, st.text(max_size=12)), max_size=8).map("/".join))


@settings(max_examples=3000, deadline=None)
@given(topics)
def test_the_topic_router_is_total(topic):
    r = route(P, ["lab"], topic)
    assert r is None or isinstance(r, (Command, Chunk))
    if isinstance(r, Chunk):
        digits = topic.rsplit("/", 1)[1]
        assert topic == f"{P}/transfer/{r.transfer_id}/{digits}" and int(digits) == r.index < 10**9
    why = reply_topic_ok(P, topic)
    assert why is None or isinstance(why, str)
    if why is None:
        assert not topic.startswith(f"{P}/") or topic.startswith(f"{P}/cmd/reply")
        assert "#" not in topic and "+" not in topic


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                      st.sampled_from(["a", "b", "../../x", "good", "bad", "trial", "ab" * 32]))
json_values = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                             st.dictionaries(st.text(max_size=10), kids, max_size=4)),
                           max_leaves=20)
KEYS = ["format", "active", "slots", "trial", "high_water", "generation", "last_rollback", "boots"]
state_docs = st.one_of(
    json_values,
    st.fixed_dictionaries({"format": st.sampled_from([1, 1, 2, "1"]), "active": st.sampled_from(["a", "b", "c", None])},
                          optional={k: json_values for k in KEYS[2:]}),
    st.fixed_dictionaries({"format": st.just(1), "active": st.sampled_from(["a", "b"]),
                           "slots": st.dictionaries(st.sampled_from(["a", "b", "c"]),
                                                    st.one_of(st.none(), st.dictionaries(
                                                        st.sampled_from(["model", "version", "sha256", "size", "status",
                                                                         "reason", "health", "bogus"]), json_leaf)))},
                          optional={"trial": st.one_of(json_values, st.fixed_dictionaries(
                              {"slot": st.sampled_from(["a", "b", "../x"]), "from": st.sampled_from(["a", "b", "/etc"])},
                              optional={"attempts": json_leaf, "probation_s": json_leaf}))}),
)


@settings(max_examples=400, deadline=None)
@given(state_docs)
def test_the_state_loader_returns_a_state_or_refuses(doc):
    try:
        st_ = State.from_json(doc)
    except ValueError:
        return
    assert st_.active in ("a", "b") and set(st_.slots) == {"a", "b"}
    if st_.trial is not None:
        assert st_.trial["slot"] in ("a", "b") and st_.trial["from"] in ("a", "b")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state_docs, st.one_of(st.none(), st.binary(max_size=64), state_docs))
def test_a_start_from_any_state_file_serves_a_verified_model_or_says_why(doc, prev):
    tmp = Path(tempfile.mkdtemp())
    try:
        initial = tmp / "v1.tflite"
        initial.write_bytes(b"model one")
        store = SlotStore(tmp / "state")
        store.boot(model_name="m", initial=str(initial), initial_version=1, max_attempts=2)
        store.file.write_text(json.dumps(doc))
        if prev is None:
            store.prev.unlink(missing_ok=True)
        elif isinstance(prev, bytes):
            store.prev.write_bytes(prev)
        else:
            store.prev.write_text(json.dumps(prev))
        try:
            plan = store.boot(model_name="m", initial=str(initial), initial_version=1, max_attempts=2)
        except StateError:
            return
        assert store.verify_slot(plan.slot)
        assert plan.path.resolve().is_relative_to((tmp / "state").resolve())
        assert store.state().high_water.get("m", 0) >= 1
        assert sha256_file(plan.path) == store.state().slots[plan.slot].sha256
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
