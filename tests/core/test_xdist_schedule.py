"""`make test`'s file scheduling (tests/support/schedule.py), driven as pytest-xdist drives it."""

from __future__ import annotations

from types import SimpleNamespace

from xdist.scheduler import LoadFileScheduling

from tests.support.schedule import HeaviestFirst

# the collection as conftest.py orders it: the longest files first, then the rest in file order
COLLECTION = ["powercut.py::t", "mqtt.py::t1", "mqtt.py::t2", "mqtt.py::t3", "mqtt.py::t4", "soak.py::t",
              "payload.py::t1", "payload.py::t2", "manifest.py::t"]


class Worker:
    shutting_down = False

    def __init__(self, name: str) -> None:
        self.name, self.files = name, []
        self.gateway = SimpleNamespace(id=name)

    def send_runtest_some(self, indices: list[int]) -> None:
        self.files.append(COLLECTION[indices[0]].split("::")[0])

    def shutdown(self) -> None:
        self.shutting_down = True

    def __repr__(self) -> str:
        return self.name


def _start(cls):
    sched = cls(SimpleNamespace(getvalue=lambda name: ["2*popen"], option=SimpleNamespace(loadscopereorder=False)))
    workers = [Worker("gw0"), Worker("gw1")]
    for w in workers:
        sched.add_node(w)
        sched.add_node_collection(w, COLLECTION)
    sched.schedule()
    return sched, workers


def test_a_worker_handed_a_second_file_before_it_starts_its_first_gets_the_lightest():
    # xdist's own: gw0 must hold its one test back until it has another, and that is soak.py,
    # the next heavy file, to run after the power cuts while gw1 idles
    _, (gw0, gw1) = _start(LoadFileScheduling)
    assert gw0.files == ["powercut.py", "soak.py"] and gw1.files == ["mqtt.py"]

    sched, (gw0, gw1) = _start(HeaviestFirst)
    assert gw0.files == ["powercut.py", "manifest.py"] and gw1.files == ["mqtt.py"]
    # gw1 is through its file's first tests: it takes the heaviest file left, soak.py
    sched.mark_test_complete(gw1, COLLECTION.index("mqtt.py::t1"))
    sched.mark_test_complete(gw1, COLLECTION.index("mqtt.py::t2"))
    assert gw1.files == ["mqtt.py", "soak.py"]
    assert list(sched.workqueue) == ["payload.py"]
