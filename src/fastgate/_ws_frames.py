"""A close frame between the fragments of a message ends the connection cleanly, as RFC 6455 says.

RFC 6455 §5.4: "Control frames MAY be injected in the middle of a fragmented message", and a close frame is a
control frame (§5.5). On receiving one an endpoint answers with a close frame and closes (§5.5.1, §7.1.2); the
message that was never finished is dropped with the rest of the data (§1.4: "after receiving a control frame
indicating the connection should be closed, a peer discards any further data received").

websockets' sans-I/O ``Protocol.recv_frame`` fails the connection instead, with 1002 "incomplete fragmented message",
when a close frame arrives while a fragmented message is open. Uvicorn's websockets-sansio protocol, which serves
fastgate's clients, uses it, and so does fastgate's upstream client, so Autobahn's case 7.1.5 (a fragment, a close
frame, the next fragment) got 1002 from fastgate where a conforming server answers 1000.
:class:`CloseBetweenFragments` forgets the unfinished message when a close frame arrives; websockets then handles
the close as it does between messages: echoes it, stops parsing, discards what follows.

``current_size`` (the size of the message being reassembled, None between messages) is websockets' own state, named
so since websockets 16.0 (``cur_size`` before), hence the pin in pyproject; the Autobahn-case tests in
``tests/proxy/test_websocket.py`` fail (1002 again) if it moves.
"""

from __future__ import annotations

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol
from websockets.server import ServerProtocol


class CloseBetweenFragments(Protocol):
    """Mix into a websockets sans-I/O protocol: a close frame ends an unfinished fragmented message, not the
    connection with 1002.

    >>> class Server(CloseBetweenFragments, ServerProtocol): ...
    """

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None  # the unfinished message, if any, is dropped (RFC 6455 §1.4, §5.4)
        super().recv_frame(frame)


class FastgateServerProtocol(CloseBetweenFragments, ServerProtocol):
    """websockets' server protocol (the client hop, under Uvicorn), honouring a close frame between fragments."""


class FastgateClientProtocol(CloseBetweenFragments, ClientProtocol):
    """websockets' client protocol (the upstream hop), honouring a close frame between fragments."""
