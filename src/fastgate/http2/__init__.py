"""HTTP/2: the codec seam (``codec.py``), the server side (``server.py``, one ``Downstream`` per stream) and the
upstream side (``fastgate.upstream.h2``)."""

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4: what a client sends first (h2c prior knowledge)
