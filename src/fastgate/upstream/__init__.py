"""The upstream side: connections, pools and the transports that send requests to upstream services."""
