"""Transport: the queue drops and counts instead of blocking; the fan-out never skips a sink."""

from __future__ import annotations

import threading

import pytest

from esper_engine.contracts import BatchStats, Event, RunFinished
from esper_engine.telemetry import FanOutSink, ListSink, QueueSink, TelemetrySink


def batch(i: int) -> BatchStats:
    return BatchStats(
        env=0,
        batch=i,
        loss=float(i),
        grad_norm_pre_clip=1.0,
        grad_norm_post_clip=1.0,
        clip_threshold=None,
        clipped=False,
    )


def test_queue_sink_drops_newest_and_counts_when_full() -> None:
    sink = QueueSink(maxsize=3)
    for i in range(5):
        sink.emit(batch(i))
    assert sink.dropped == 2
    assert [e.batch for e in sink.drain()] == [0, 1, 2]
    sink.emit(batch(9))  # room again after the drain
    assert [e.batch for e in sink.drain()] == [9]
    assert sink.dropped == 2


def test_drain_respects_max_items_and_never_waits() -> None:
    sink = QueueSink(maxsize=10)
    assert sink.drain() == []
    for i in range(5):
        sink.emit(batch(i))
    assert [e.batch for e in sink.drain(max_items=2)] == [0, 1]
    assert [e.batch for e in sink.drain(max_items=10)] == [2, 3, 4]


def test_emit_on_full_queue_never_blocks() -> None:
    sink = QueueSink(maxsize=1)
    done = threading.Event()

    def producer() -> None:
        for i in range(1000):
            sink.emit(batch(i))
        done.set()

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    # Nobody drains: a blocking put would never finish.
    assert done.wait(timeout=10), "emit blocked on a full queue"
    assert sink.dropped == 999


def test_dropped_counter_is_exact_under_concurrent_producers() -> None:
    sink = QueueSink(maxsize=50)
    threads = [
        threading.Thread(target=lambda: [sink.emit(batch(i)) for i in range(2000)])
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sink.drain()) == 50
    assert sink.dropped == 4 * 2000 - 50


def test_queue_sink_rejects_nonpositive_size() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        QueueSink(maxsize=0)


def test_fan_out_gives_every_event_to_the_recorder_even_when_the_queue_is_full() -> None:
    queue_sink, recorder = QueueSink(maxsize=2), ListSink()
    fan = FanOutSink(queue_sink, recorder)
    events = [batch(i) for i in range(6)]
    for event in events:
        fan.emit(event)
    fan.close()
    assert recorder.events == events
    assert queue_sink.drain() == events[:2]
    assert queue_sink.dropped == 4
    assert recorder.closed and queue_sink.closed


class BrokenSink:
    def emit(self, event: Event) -> None:
        raise RuntimeError("console gone")

    def close(self) -> None:
        raise RuntimeError("close failed")


def test_fan_out_serves_all_sinks_before_reraising() -> None:
    recorder = ListSink()
    fan = FanOutSink(BrokenSink(), recorder)
    finished = RunFinished(status="completed")
    with pytest.raises(RuntimeError, match="console gone"):
        fan.emit(finished)
    assert recorder.events == [finished]
    with pytest.raises(RuntimeError, match="close failed"):
        fan.close()
    assert recorder.closed


def test_sinks_satisfy_the_protocol() -> None:
    for sink in (QueueSink(), ListSink(), FanOutSink()):
        assert isinstance(sink, TelemetrySink)
