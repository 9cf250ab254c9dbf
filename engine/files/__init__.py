"""Files: input sources, output sinks, resume, manifests."""
