"""The response read-ahead's policy and spool, without sockets (proxy/readahead.py); the relay through a real
gateway process is in tests/hostile/test_slow_clients.py."""

from __future__ import annotations

import anyio
import pytest

from fastgate.proxy.readahead import FILE, MEMORY, SPILL_AFTER, WAIT, ReadAheadLimits, ResponseSpool, placement

LIMITS = ReadAheadLimits(memory_bytes=1000, file_bytes=5000)


@pytest.mark.parametrize(
    ("size", "memory_used", "file_held", "file_end", "stalled_for", "where"),
    [
        (400, 0, 0, 0, 0.0, MEMORY),  # room in memory
        (400, 600, 0, 0, 0.0, MEMORY),  # exactly full
        (4000, 0, 0, 0, 0.0, MEMORY),  # an empty spool takes one piece whatever its size
        (401, 600, 0, 0, 0.0, WAIT),  # memory full, client not (yet) stalled: backpressure, no file write
        (401, 600, 0, 0, SPILL_AFTER / 2, WAIT),
        (401, 600, 0, 0, SPILL_AFTER, FILE),  # memory full and the client stalled: the file
        (100, 0, 300, 300, 0.0, FILE),  # once the file holds data, every piece goes after it, stalled or not
        (100, 600, 300, 4900, 0.0, FILE),  # up to the file's bound...
        (101, 600, 300, 4900, 5.0, WAIT),  # ...and no further: backpressure
        (5001, 1000, 0, 0, 5.0, WAIT),  # a piece bigger than the file never goes there
    ],
)
def test_placement(size: int, memory_used: int, file_held: int, file_end: int, stalled_for: float, where: str) -> None:
    assert (
        placement(
            size, LIMITS, memory_used=memory_used, file_held=file_held, file_end=file_end, stalled_for=stalled_for
        )
        == where
    )


def test_no_file_means_memory_then_backpressure() -> None:
    limits = ReadAheadLimits(memory_bytes=1000, file_bytes=0)
    assert placement(10, limits, memory_used=995, file_held=0, file_end=0, stalled_for=60.0) == WAIT


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.anyio
async def test_spool_keeps_order_through_memory_and_file_and_rewinds_the_file() -> None:
    clock = Clock()
    spool = ResponseSpool(ReadAheadLimits(memory_bytes=10, file_bytes=30), clock)
    pieces = [b"%02d-xxxxx" % i for i in range(8)]  # 8 bytes each
    await spool.put(pieces[0])  # memory (8)
    spool.sending(True)  # the pump is blocked on the client from now on
    clock.now += 2 * SPILL_AFTER
    for piece in pieces[1:4]:  # memory is full and the client stalled: the file (24 of 30)
        await spool.put(piece)
    assert spool.peak_memory == 8
    assert spool.peak_file == 24
    with anyio.move_on_after(0.2) as waited:
        await spool.put(pieces[4])  # 32 > 30: backpressure
    assert waited.cancelled_caught
    spool.received -= len(pieces[4])  # that put never completed
    assert await spool.take() == pieces[0]  # memory first...
    assert await spool.take() == b"".join(pieces[1:4])  # ...then the file, read in pieces of up to 64 KiB
    assert spool.empty
    for piece in pieces[4:]:  # the file was read to its end: rewound, and memory is used again
        await spool.put(piece)
    spool.end()
    rest = []
    while data := await spool.take():
        rest.append(data)
    assert b"".join(rest) == b"".join(pieces[4:])
    assert spool.peak_file == 24  # never past its bound
    assert spool.received == 64
    spool.close()


@pytest.mark.anyio
async def test_a_full_spool_waits_until_the_pump_takes_a_piece() -> None:
    spool = ResponseSpool(ReadAheadLimits(memory_bytes=10, file_bytes=0))
    await spool.put(b"a" * 8)
    done = anyio.Event()

    async def producer() -> None:
        await spool.put(b"b" * 8)
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(producer)
        await anyio.sleep(0.05)
        assert not done.is_set()  # memory full, no file: backpressure
        assert await spool.take() == b"a" * 8
        with anyio.fail_after(5):
            await done.wait()
    spool.end()
    assert await spool.take() == b"b" * 8
    assert await spool.take() == b""
    spool.close()


@pytest.mark.anyio
async def test_idle_means_everything_put_was_sent() -> None:
    spool = ResponseSpool(ReadAheadLimits(memory_bytes=10, file_bytes=0))
    assert spool.idle
    await spool.put(b"a")
    assert not spool.idle  # not taken yet
    assert await spool.take() == b"a"
    spool.sending(True)
    assert not spool.idle  # taken, but the client has not accepted it
    spool.sending(False)
    assert spool.idle
    spool.close()


class CountingClock(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now


@pytest.mark.anyio
@pytest.mark.parametrize("file_bytes", [0, 8])
async def test_a_full_spool_with_a_stalled_client_waits_without_spinning(file_bytes: int) -> None:
    """Memory full, the client stalled past SPILL_AFTER, and no room in the file (none, or full): ``put`` waits for
    the client to take something, it does not poll."""
    clock = CountingClock()
    spool = ResponseSpool(ReadAheadLimits(memory_bytes=10, file_bytes=file_bytes), clock)
    await spool.put(b"a" * 8)
    spool.sending(True)
    clock.now += 2 * SPILL_AFTER
    if file_bytes:
        await spool.put(b"b" * 8)  # fills the file
    calls = clock.calls
    with anyio.move_on_after(0.3) as waited:
        await spool.put(b"c" * 8)
    assert waited.cancelled_caught
    assert clock.calls - calls <= 2, f"put looked {clock.calls - calls} times in 0.3 s"
    spool.close()
