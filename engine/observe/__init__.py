"""Watching a run while it goes on: Prometheus /metrics and a live dashboard page.

Both read the run's `Watch` (engine/runtime/watch.py) at their own pace, on the run's
event loop; `serve.observed` binds and runs them around a run (engine/api.py).
"""
