"""What the daemon exports about itself: Prometheus metrics, logs, and recent history."""
