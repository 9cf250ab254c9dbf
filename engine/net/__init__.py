"""The network: HTTP clients, the transport seam, tokens."""
