"""HTTP/2 codec micro-benchmark (issue 18): python-hyper's ``h2`` (through ``fastgate.http2.codec``) against ``zttp``.

    PYTHONPATH=src venv/bin/python bench/h2_codec.py                # ~20 s: 5 rounds of each case, best round kept
    PYTHONPATH=src venv/bin/python bench/h2_codec.py --requests 5000 --upload-mib 64 --rounds 5

Server side only, no sockets: the client's bytes are made once (an ``h2`` client connection HPACK-encodes the
requests, so later requests use the dynamic table as a real client's do) and fed to a fresh server connection each
round, in the chunks a client would write them.

- **small GET**: ``--requests`` GETs (h2load's headers), 1,000 per connection (zttp 0.0.35 answers the 4,097th
  stream of a connection with GOAWAY ENHANCE_YOUR_CALM, "flood detected", however slowly they come; fastgate's
  HTTP/1.1 server also closes after 1,000), fed 10 requests per write (``h2load -m 10``); for each
  request the server parses it and encodes a 256-byte response (HEADERS with ``content-type`` and
  ``content-length``, DATA with END_STREAM), then takes the bytes to send after each write. Figure: µs per request.
- **upload**: one POST of ``--upload-mib`` MiB in 16 KiB DATA frames, fed 64 KiB per write; the server reads every
  byte and, for ``h2``, acknowledges each DATA frame at once (what fastgate does once the bytes are written
  upstream), which queues its WINDOW_UPDATEs. Figure: MB/s parsed.
- **download**: one GET answered with ``--upload-mib`` MiB in 16 KiB DATA frames (the client opened its windows
  wide in its preface). Figure: MB/s encoded.

Then it checks inbound flow control: 512 KiB of DATA on one stream to a server that does not give the bytes back
(``h2``: no ``acknowledge_received_data``; ``zttp``: events read, nothing else): does the server send WINDOW_UPDATE
for that stream anyway, and what does it do when the client sends past the window it advertised?

Every loop is bounded by its count; nothing here opens a socket.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import struct
import sys
import time
from collections.abc import Callable
from importlib.metadata import version

import zttp

from fastgate.http2 import codec

STREAM_WINDOW = 1 << 20  # fastgate's default initial_stream_window_bytes
CONNECTION_WINDOW = 4 << 20  # fastgate's default initial_connection_window_bytes
BODY = bytes(range(256))
FRAME = 16384
FEED = 65536
RESPONSE_HEADERS = [(b"content-type", b"application/octet-stream"), (b"content-length", b"256")]
MB = 1_000_000


# --- the client's bytes ---------------------------------------------------------------------------------------------


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream_id) + payload


def _settings_ack() -> bytes:
    return _frame(0x4, 0x1, 0, b"")


def client_gets(count: int, per_write: int) -> list[bytes]:
    """The writes of a client sending ``count`` GETs, ``per_write`` to a write; the first write starts with the
    preface and the client's SETTINGS (windows opened wide, so the server's sends are never held)."""
    client = codec.client_connection(initial_window=(1 << 31) - 1)
    client.initiate_connection()
    client.increment_flow_control_window((1 << 31) - 1 - 65535)
    writes: list[bytes] = []
    head = client.data_to_send() + _settings_ack()
    headers = [
        (b":method", b"GET"),
        (b":path", b"/256b"),
        (b":scheme", b"http"),
        (b":authority", b"127.0.0.1:8080"),
        (b"accept", b"*/*"),
        (b"accept-encoding", b"gzip, deflate"),
        (b"user-agent", b"h2load nghttp2/1.52.0"),
    ]
    for start in range(0, count, per_write):
        for _ in range(min(per_write, count - start)):
            client.send_headers(client.get_next_available_stream_id(), headers, end_stream=True)
            # Streams close when their response ends; the client's own copy must forget them too, or its
            # concurrency limit stops it: a reset here is never sent (data_to_send is not taken for it).
        writes.append(head + client.data_to_send())
        head = b""
        for stream_id in list(client.streams):
            client.streams.pop(stream_id)
    return writes


def client_upload(total: int) -> list[bytes]:
    """A POST of ``total`` bytes in 16 KiB DATA frames, cut into 64 KiB writes (raw frames: the server's window is
    not modelled on the client side, it is wide enough for every write)."""
    client = codec.client_connection(initial_window=(1 << 31) - 1)
    client.initiate_connection()
    client.send_headers(
        1,
        [(b":method", b"POST"), (b":path", b"/upload"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:8080"),
         (b"content-length", str(total).encode())],
    )  # fmt: skip
    stream = client.data_to_send() + _settings_ack()
    chunk = bytes(range(256)) * (FRAME // 256)
    frames = [_frame(0x0, 0x0, 1, chunk) for _ in range(total // FRAME - 1)] + [_frame(0x0, 0x1, 1, chunk)]
    data = stream + b"".join(frames)
    return [data[i : i + FEED] for i in range(0, len(data), FEED)]


# --- the two servers ------------------------------------------------------------------------------------------------


def h2_server() -> codec.H2Connection:
    conn = codec.server_connection(
        max_concurrent_streams=100, initial_window=STREAM_WINDOW, max_header_list=65536, max_frame=FRAME
    )
    conn.initiate_connection()
    conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    conn.data_to_send()
    return conn


PER_CONNECTION = 1000


def h2_gets(writes: list[bytes], connections: int, answer: bool = True) -> int:
    answered = 0
    for _ in range(connections):
        answered += _h2_gets(writes, answer)
    return answered


def _h2_gets(writes: list[bytes], answer: bool) -> int:
    conn = h2_server()
    answered = 0
    for data in writes:
        for event in conn.receive_data(data):
            if isinstance(event, codec.RequestReceived):
                sid = event.stream_id
                if answer:
                    conn.send_headers(sid, [(b":status", b"200"), *RESPONSE_HEADERS])
                    conn.send_data(sid, BODY, end_stream=True)
                else:  # the stream stays half-open: forget it so the concurrency limit does not stop the client
                    conn.streams.pop(sid)
                answered += 1
        conn.data_to_send()
    return answered


def h2_upload(writes: list[bytes]) -> int:
    conn = h2_server()
    got = 0
    for data in writes:
        for event in conn.receive_data(data):
            if isinstance(event, codec.DataReceived):
                got += len(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        conn.data_to_send()
    return got


def h2_download(writes: list[bytes], total: int) -> int:
    conn = h2_server()
    for event in conn.receive_data(writes[0]):
        if isinstance(event, codec.RequestReceived):
            sid = event.stream_id
    conn.send_headers(sid, [(b":status", b"200"), (b"content-length", str(total).encode())])
    chunk = bytes(range(256)) * (FRAME // 256)
    sent = 0
    for i in range(total // FRAME):
        conn.send_data(sid, chunk, end_stream=i == total // FRAME - 1)
        sent += len(conn.data_to_send())
    return sent


def zttp_server() -> zttp.H2Connection:
    conn = zttp.Connection(zttp.SERVER, zttp.HTTP2)
    conn.initiate_connection()
    conn.data_to_send()
    return conn


def zttp_gets(writes: list[bytes], connections: int, answer: bool = True) -> int:
    answered = 0
    for _ in range(connections):
        answered += _zttp_gets(writes, answer)
    return answered


def _zttp_gets(writes: list[bytes], answer: bool) -> int:
    conn = zttp_server()
    answered = 0
    for data in writes:
        conn.receive_data(data)
        while (event := conn.next_event()) is not zttp.NEED_DATA:
            if isinstance(event, zttp.Request):
                if answer:
                    stream = conn.stream(event.stream_id)
                    stream.send_response(200, RESPONSE_HEADERS)
                    stream.send_data(BODY)
                    stream.end_message()
                answered += 1
        conn.data_to_send()
    return answered


def zttp_upload(writes: list[bytes]) -> int:
    conn = zttp_server()
    got = 0
    for data in writes:
        conn.receive_data(data)
        while (event := conn.next_event()) is not zttp.NEED_DATA:
            if isinstance(event, zttp.Data):
                got += len(event.data)
        conn.data_to_send()
    return got


def zttp_download(writes: list[bytes], total: int) -> int:
    conn = zttp_server()
    conn.receive_data(writes[0])
    while (event := conn.next_event()) is not zttp.NEED_DATA:
        if isinstance(event, zttp.Request):
            stream = conn.stream(event.stream_id)
    stream.send_response(200, [(b"content-length", str(total).encode())])
    chunk = bytes(range(256)) * (FRAME // 256)
    sent = 0
    for i in range(total // FRAME):
        stream.send_data(chunk)
        if i == total // FRAME - 1:
            stream.end_message()
        sent += len(conn.data_to_send())
    return sent


def best(run: Callable[[], int], rounds: int, expect: int) -> float:
    """The fastest of ``rounds`` runs in seconds (CPU time of this process; the collector off during each run)."""
    times = []
    for _ in range(rounds):
        gc.collect()
        gc.disable()
        start = time.process_time()
        got = run()
        times.append(time.process_time() - start)
        gc.enable()
        if got != expect:
            raise SystemExit(f"bench: expected {expect}, got {got}")
    return min(times)


# --- flow control ---------------------------------------------------------------------------------------------------


def _frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i : i + 3], "big")
        kind, flags = data[i + 3], data[i + 4]
        sid = int.from_bytes(data[i + 5 : i + 9], "big") & 0x7FFFFFFF
        out.append((kind, flags, sid, data[i + 9 : i + 9 + length]))
        i += 9 + length
    return out


def _window_updates(data: bytes) -> dict[int, int]:
    grants: dict[int, int] = {}
    for kind, _flags, sid, payload in _frames(data):
        if kind == 0x8:
            grants[sid] = grants.get(sid, 0) + (int.from_bytes(payload, "big") & 0x7FFFFFFF)
    return grants


def _advertised_window(server_preface: bytes) -> int:
    for kind, flags, _sid, payload in _frames(server_preface):
        if kind == 0x4 and not flags & 0x1:
            for i in range(0, len(payload), 6):
                ident, value = struct.unpack(">HI", payload[i : i + 6])
                if ident == 0x4:
                    return value
    return 65535


def flow_control(total: int = 512 * 1024) -> list[str]:
    """512 KiB of DATA on stream 1 to a server that reads the events and gives nothing back."""
    writes = client_upload(total)
    lines = []
    h2conn = codec.server_connection(
        max_concurrent_streams=100, initial_window=65535, max_header_list=65536, max_frame=FRAME
    )
    h2conn.initiate_connection()
    h2_preface = h2conn.data_to_send()
    h2_granted: dict[int, int] = {}
    h2_error = ""
    fed = 0
    try:
        for data in writes:
            h2conn.receive_data(data)
            fed += len(data)
            for sid, grant in _window_updates(h2conn.data_to_send()).items():
                h2_granted[sid] = h2_granted.get(sid, 0) + grant
    except codec.FlowControlError as exc:
        h2_error = f"FlowControlError after {fed:,} bytes fed: {exc}"
    except codec.ProtocolError as exc:
        h2_error = f"{type(exc).__name__} after {fed:,} bytes fed: {exc}"
    lines.append(
        f"- `h2` (fastgate's codec settings, stream window {_advertised_window(h2_preface):,}), nothing "
        f"acknowledged: WINDOW_UPDATE granted {h2_granted or 'none'}; "
        f"{h2_error or 'no error'}{'; pending close: ' + repr(_frames(h2conn.data_to_send())[-1:]) if h2_error else ''}"
    )
    zconn = zttp.Connection(zttp.SERVER, zttp.HTTP2)
    zconn.initiate_connection()
    z_preface = zconn.data_to_send()
    z_granted: dict[int, int] = {}
    z_before_events = 0  # granted between receive_data and the first next_event: none means "granted on parse"
    z_error = ""
    fed = received = 0
    try:
        for data in writes:
            zconn.receive_data(data)
            fed += len(data)
            z_before_events += sum(_window_updates(zconn.data_to_send()).values())
            while (event := zconn.next_event()) is not zttp.NEED_DATA:
                if isinstance(event, zttp.Data):
                    received += len(event.data)
            for sid, grant in _window_updates(zconn.data_to_send()).items():
                z_granted[sid] = z_granted.get(sid, 0) + grant
    except zttp.ProtocolError as exc:
        z_error = f"{type(exc).__name__} after {fed:,} bytes fed: {exc}"
    lines.append(
        f"- `zttp` (stream window it advertises: {_advertised_window(z_preface):,}), events read and nothing else: "
        f"WINDOW_UPDATE granted {z_granted or 'none'} for {received:,} bytes received "
        f"({z_before_events:,} of it before the events were read); {z_error or 'no error'}"
    )
    consume = [name for name in dir(zconn) if "consume" in name or "acknowledge" in name or "window" in name]
    lines.append(f"- `zttp.H2Connection` names about windows: {consume} (H3Connection has `consume_data`)")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=5000, help="GETs per round, 1,000 per connection (default 5000)")
    p.add_argument("--upload-mib", type=int, default=64, help="MiB uploaded and downloaded per round (default 64)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per case; the fastest is kept (default 5)")
    args = p.parse_args()
    if not 1 <= args.requests <= 100_000 or not 1 <= args.upload_mib <= 256 or not 1 <= args.rounds <= 20:
        p.error("--requests 1..100000, --upload-mib 1..256, --rounds 1..20")
    total = args.upload_mib * 1024 * 1024
    connections = max(1, args.requests // PER_CONNECTION)
    args.requests = connections * PER_CONNECTION
    gets = client_gets(PER_CONNECTION, 10)
    gets100 = client_gets(PER_CONNECTION // 10, 10)  # unanswered streams stay open: within zttp's 128 and h2's 100
    upload = client_upload(total)
    one_get = client_gets(1, 1)
    cases = [
        (
            "small GET, µs/request",
            lambda: h2_gets(gets, connections),
            lambda: zttp_gets(gets, connections),
            args.requests,
            "us",
        ),
        (
            "small GET parsed only (no answer; 100 per connection), µs/request",
            lambda: h2_gets(gets100, connections * 10, answer=False),
            lambda: zttp_gets(gets100, connections * 10, answer=False),
            args.requests,
            "us",
        ),
        ("upload, MB/s parsed", lambda: h2_upload(upload), lambda: zttp_upload(upload), total, "MB/s"),
        (
            "download, MB/s encoded",
            lambda: h2_download(one_get, total),
            lambda: zttp_download(one_get, total),
            0,
            "MB/s",
        ),  # fmt: skip
    ]
    print(f"Python {platform.python_version()} ({sys.executable}); h2 {version('h2')}, zttp {version('zttp')}; "
          f"{os.cpu_count()} CPUs, {_cpu()}; best of {args.rounds} rounds, CPU time of this process")  # fmt: skip
    print()
    print("| case | h2 | zttp | zttp ÷ h2 |")
    print("|---|---:|---:|---:|")
    for title, h2_run, z_run, expect, unit in cases:
        if expect == 0:  # download: the bytes written depend on the codec's framing; check it is at least the body
            expect_h2, expect_z = h2_run(), z_run()
            if min(expect_h2, expect_z) < total:
                raise SystemExit(f"bench: download wrote {expect_h2} / {expect_z} bytes, fewer than {total}")
            h2_s, z_s = best(h2_run, args.rounds, expect_h2), best(z_run, args.rounds, expect_z)
        else:
            h2_s, z_s = best(h2_run, args.rounds, expect), best(z_run, args.rounds, expect)
        if unit == "us":
            h2_v, z_v = h2_s * 1e6 / args.requests, z_s * 1e6 / args.requests
            print(f"| {title} | {h2_v:.1f} | {z_v:.1f} | {z_v / h2_v:.2f} |")
        else:
            h2_v, z_v = total / h2_s / MB, total / z_s / MB
            print(f"| {title} | {h2_v:,.0f} | {z_v:,.0f} | {z_v / h2_v:.2f} |")
    print()
    print("Inbound flow control, 512 KiB on one stream, the server giving nothing back:")
    for line in flow_control():
        print(line)
    return 0


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo").read().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    sys.exit(main())
