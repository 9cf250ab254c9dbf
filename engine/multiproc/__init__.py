"""`--workers N`: typed messages, the parent, the child."""
