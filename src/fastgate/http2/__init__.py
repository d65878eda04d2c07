"""HTTP/2: the codec seam (``codec.py``), the server side (``server.py``, one ``Downstream`` per stream) and the
upstream side (``fastgate.upstream.h2``)."""
