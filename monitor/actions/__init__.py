"""What happens on a health transition: decisions, flags, alerts, audit and review."""
