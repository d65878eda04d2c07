"""HTTP/2 to upstreams (``protocol: h2c`` and ``h2``): a multiplexed connection pool behind the Transport seam."""
