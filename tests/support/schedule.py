"""How `make test` shares its test files among pytest-xdist workers.

A file's tests run on one worker, in order (module fixtures: the fleet, the wheel). The suite
takes as long as its busiest worker, so the files that take longest go first (each file's
`pytest.mark.long(seconds=...)`, its wall time under `make test`; see conftest.py) and the short
ones fill the gaps at the end.

xdist's own file scheduler undoes that in one place. A worker holds its last queued test back
until it is given more work (pytest runs a test only once it knows the next one), so a worker
whose file has one or two tests is handed a second file before it starts the first, and that
second file is the next heavy one in the queue: the 90 s power-cut test and an 85 s file then
ran back to back on one worker while the others finished a minute earlier. Here such an early
hand-out takes the lightest waiting file instead; a worker that is through its file's first
test takes the heaviest, as before.
"""

from __future__ import annotations

from xdist.scheduler import LoadFileScheduling


class HeaviestFirst(LoadFileScheduling):
    """`--dist loadfile`, with early hand-outs taken from the light end of the queue."""

    def _assign_work_unit(self, node) -> None:
        if self.workqueue and self._has_unstarted_file(node):
            scope, unit = self.workqueue.popitem(last=True)  # the lightest file waiting
            self.workqueue[scope] = unit
            self.workqueue.move_to_end(scope, last=False)  # the base class takes the first
        super()._assign_work_unit(node)

    def _has_unstarted_file(self, node) -> bool:
        return any(not any(done.values()) for done in self.assigned_work.get(node, {}).values())
