"""Logging (and later metrics and tracing) for fastgate."""
