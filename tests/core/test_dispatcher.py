"""The command dispatcher: framing, stable error codes, handler table, deferred replies."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.control.dispatcher import DEFERRED, Dispatcher
from edgeagent.errors import StateError


def make() -> Dispatcher:
    d = Dispatcher()
    d.register("ping", lambda a, c: {"pong": True})
    d.register("boom", lambda a, c: 1 / 0)
    d.register("refuse", lambda a, c: (_ for _ in ()).throw(StateError("state.no_trial", "nothing on trial")))
    return d


def run(d: Dispatcher, raw, source="mqtt"):
    out = []
    d.handle(raw, out.append, source=source)
    return out


def test_ok_reply_echoes_id():
    assert run(make(), b'{"id":"1","op":"ping"}') == [{"id": "1", "ok": True, "result": {"pong": True}}]


@pytest.mark.parametrize(
    "raw, code",
    [
        (b"not json", "cmd.malformed_json"),
        (b"[1,2]", "cmd.not_object"),
        (b'{"id":"x","op":"nope"}', "cmd.unknown_op"),
        (b'{"id":"x","op":7}', "cmd.bad_field"),
        (b'{"id":"x","op":"ping","args":[]}', "cmd.bad_field"),
        (b'{"id":"x","op":"ping","extra":1}', "cmd.bad_field"),
        (b'{"id":"x","op":"ping","args":' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}", "cmd.too_deep"),
        (b'{"id":"x","op":"boom"}', "cmd.internal"),
        (b'{"id":"x","op":"refuse"}', "state.no_trial"),
    ],
)
def test_errors_have_stable_codes(raw, code):
    replies = run(make(), raw, source="control")
    assert len(replies) == 1 and replies[0]["ok"] is False
    assert replies[0]["error"]["code"] == code


def test_no_usable_id_over_mqtt_means_no_reply_but_no_crash():
    assert run(make(), b'{"op":"ping"}', source="mqtt") == []
    assert run(make(), b"garbage", source="mqtt") == []


def test_oversized_command():
    d = make()
    big = json.dumps({"id": "1", "op": "ping", "args": {"x": "a" * (2 << 20)}})
    assert run(d, big, source="control")[0]["error"]["code"] == "cmd.too_large"


def test_deferred_reply_from_another_thread():
    d = Dispatcher()

    def slow(args, ctx):
        threading.Timer(0.05, lambda: ctx.reply({"done": True})).start()
        return DEFERRED

    d.register("slow", slow)
    got = threading.Event()
    out = []
    d.start()
    d.submit(b'{"id":"s","op":"slow"}', lambda m: (out.append(m), got.set()))
    assert got.wait(5)
    d.stop()
    assert out == [{"id": "s", "ok": True, "result": {"done": True}}]


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                 max_leaves=20).map(lambda o: json.dumps(o).encode()),
    st.fixed_dictionaries({"id": st.one_of(st.text(max_size=10), st.integers(), st.none()),
                           "op": st.sampled_from(["ping", "boom", "refuse", "x", ""]),
                           "args": st.one_of(st.dictionaries(st.text(max_size=4), st.integers(), max_size=3), st.integers())}).map(lambda o: json.dumps(o).encode()),
))
def test_fuzz_never_raises_and_replies_are_well_formed(raw):
    replies = run(make(), raw, source="control")
    assert len(replies) == 1
    r = replies[0]
    assert set(r) in ({"id", "ok", "result"}, {"id", "ok", "error"})
    if not r["ok"]:
        assert r["error"]["code"].count(".") >= 1 and r["error"]["message"] is not None
    json.dumps(r)
