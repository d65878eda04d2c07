"""fastgate's HTTP/1.1 server side: the connection protocol, the request cycle, limits and deadlines."""
