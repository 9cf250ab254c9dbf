"""Open-model load tests and traffic replay."""
