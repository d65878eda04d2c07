"""The proxy side: header rules and the HTTP exchange."""
