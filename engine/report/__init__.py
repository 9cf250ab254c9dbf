"""Reports: text and HTML."""
