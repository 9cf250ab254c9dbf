"""The engine that drives core's call flow, and what every run needs."""
