"""The output runner's written guarantees: order of items against calls, and what a stop does with queued work.

Outputs here are small recording outputs (the runner is the unit under
test) and the real files output on a real directory; nothing is mocked.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reloader.model import Server, Upstream
from reloader.outputs.base import Output
from reloader.outputs.files import FilesOutput, FileStore
from reloader.runner import OutputRunner

Item = tuple[str, int]  # (key, sequence number of the offer)


class Recording(Output):
    """Records every delivery, call and close, in order; a delivery may be held on a gate."""

    name = "recording"

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def publish(self, upstream: Upstream) -> None:
        raise AssertionError("not used")

    def deliver(self, item: Item) -> None:
        self.entered.set()
        self.gate.wait()
        self.log.append(("item", item))

    def deliver_many(self, items: list[Item]) -> None:
        for item in items:
            self.deliver(item)

    def call(self, tag: int) -> None:
        self.log.append(("call", tag))

    def close(self) -> None:
        self.log.append(("close", None))


def runner_for(output: Recording, batched: bool = True) -> OutputRunner[Item]:
    return OutputRunner(output, deliver=output.deliver, key=lambda item: item[0], idle=0.05,
                        deliver_many=output.deliver_many if batched else None)


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def test_a_call_runs_between_the_items_offered_before_and_after_it() -> None:
    output = Recording()
    runner = runner_for(output)
    runner.offer_many([("a", 1)])
    runner.submit(lambda: output.call(2))
    runner.offer_many([("a", 3), ("b", 4)])
    runner.start()
    assert runner.stop(time.monotonic() + 5)
    assert output.log == [("item", ("a", 1)), ("call", 2), ("item", ("a", 3)), ("item", ("b", 4)), ("close", None)]


def test_a_rewire_submitted_before_a_batch_is_in_force_for_that_batch(tmp_path: Path) -> None:
    """What a SIGHUP that changes the outputs does: new renderer and listeners, then every state again."""
    store = FileStore(tmp_path)
    store.prepare()
    old_events: list[Any] = []
    new_events: list[Any] = []
    files = FilesOutput(store, listeners=[old_events.extend])
    runner: OutputRunner[Upstream] = OutputRunner(files, deliver=files.publish, key=lambda u: u.name,
                                                  deliver_many=files.publish_many)
    states = [Upstream(f"app{n}", (Server("10.0.0.1", 80 + n),), live_count=1) for n in range(3)]
    runner.offer_many(states)

    def rewire() -> None:
        files.set_listeners([new_events.extend])
        files.set_render(lambda u: f"# new rendering\nupstream {u.name} {{\n    server 10.0.0.1:80;\n}}\n")

    runner.submit(rewire)
    runner.offer_many(states)
    runner.start()
    assert runner.stop(time.monotonic() + 5)
    assert all(store.read(u.name).startswith("# new rendering") for u in states)  # type: ignore[union-attr]
    assert sorted(e.upstream.name for e in new_events) == ["app0", "app1", "app2"], "the new listeners get every state"
    assert sorted(e.upstream.name for e in old_events) == ["app0", "app1", "app2"]


def test_stop_finishes_the_work_owed_before_it() -> None:
    output = Recording()
    output.gate.clear()
    runner = runner_for(output, batched=False)
    runner.start()
    runner.offer_many([("a", 1)])
    assert output.entered.wait(5), "the first delivery started"
    # Offered while the output is busy, then a stop: owed, so delivered before close.
    runner.offer_many([("b", 2)])
    runner.submit(lambda: output.call(3))
    stopped: list[bool] = []
    stopper = threading.Thread(target=lambda: stopped.append(runner.stop(time.monotonic() + 5)))
    stopper.start()
    wait_for(lambda: runner._stopping, 5, "the stop request")
    runner.offer_many([("c", 4)])  # after the stop: not taken
    output.gate.set()
    stopper.join(10)
    assert stopped == [True]
    assert output.log == [("item", ("a", 1)), ("item", ("b", 2)), ("call", 3), ("close", None)]
    assert runner.dropped == 1


def test_stop_returns_by_its_deadline_when_the_output_hangs() -> None:
    output = Recording()
    output.gate.clear()
    runner = runner_for(output)
    runner.start()
    runner.offer_many([("a", 1)])
    assert output.entered.wait(5)
    began = time.monotonic()
    assert runner.stop(began + 0.3) is False
    assert time.monotonic() - began < 1.0
    output.gate.set()  # let the daemon thread go


Op = tuple[str, Any]
ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.lists(st.sampled_from("abcd"), min_size=1, max_size=4)),
        st.tuples(st.just("call"), st.none()),
        st.tuples(st.just("pause"), st.none()),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy, start_first=st.booleans(), batched=st.booleans())
def test_any_interleaving_keeps_the_order_and_stop_delivers_everything(
    ops: list[Op], start_first: bool, batched: bool
) -> None:
    """Random offers and calls, with the thread running or not: the written guarantees hold.

    * every call runs once, in submit order;
    * an item offered before a call is delivered (itself or a newer state of
      its key offered before the call) before the call runs; an item offered
      after a call is never delivered before it;
    * after stop, the newest state of every key has been delivered, and close ran last.
    """
    output = Recording()
    runner = runner_for(output, batched)
    if start_first:
        runner.start()
    offered: list[tuple[int, str]] = []  # (seq, key)
    calls: list[int] = []
    for seq, (kind, arg) in enumerate(ops):
        if kind == "offer":
            runner.offer_many([(key, seq) for key in arg])
            offered += [(seq, key) for key in arg]
        elif kind == "call":
            runner.submit(lambda seq=seq: output.call(seq))
            calls.append(seq)
        else:
            time.sleep(0.001)  # let the thread take what is queued so far
    if not start_first:
        runner.start()
    assert runner.stop(time.monotonic() + 10)
    log = output.log
    assert log[-1] == ("close", None)
    assert [tag for kind, tag in log if kind == "call"] == calls
    position = {("call", tag): i for i, (kind, tag) in enumerate(log) if kind == "call"}
    delivered = [(i, item) for i, (kind, item) in enumerate(log) if kind == "item"]
    for call in calls:
        at = position[("call", call)]
        before = {key for i, (key, seq) in delivered if seq < call and i < at}
        wanted = {key for seq, key in offered if seq < call}
        assert wanted <= before, f"items offered before call {call} not delivered before it"
        late = [item for i, item in delivered if i < at and item[1] > call]
        assert not late, f"items offered after call {call} delivered before it: {late}"
    newest: dict[str, int] = {}
    for seq, key in offered:
        newest[key] = seq
    final: dict[str, int] = {}
    for _, (key, seq) in delivered:
        final[key] = seq
    assert final == newest


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops_strategy, stop_at=st.integers(0, 25), batched=st.booleans())
def test_a_stop_anywhere_delivers_what_came_before_it_and_nothing_after(
    ops: list[Op], stop_at: int, batched: bool
) -> None:
    """Stop in the middle of random work: everything offered before it is delivered, nothing after, close last."""
    output = Recording()
    runner = runner_for(output, batched)
    runner.start()
    newest: dict[str, int] = {}
    calls_before: list[int] = []
    stopped = False
    for seq, (kind, arg) in enumerate(ops):
        if seq == stop_at:
            assert runner.stop(time.monotonic() + 10)
            stopped = True
        if kind == "offer":
            runner.offer_many([(key, seq) for key in arg])
            if not stopped:
                newest.update({key: seq for key in arg})
        elif kind == "call":
            runner.submit(lambda seq=seq: output.call(seq))
            if not stopped:
                calls_before.append(seq)
    if not stopped:
        assert runner.stop(time.monotonic() + 10)
    assert output.log[-1] == ("close", None)
    assert [tag for kind, tag in output.log if kind == "call"] == calls_before
    final: dict[str, int] = {}
    for kind, item in output.log:
        if kind == "item":
            final[item[0]] = item[1]
    assert final == newest
