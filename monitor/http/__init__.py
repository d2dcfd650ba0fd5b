"""The daemon's HTTP server: probes, /metrics, /status, the operator API, the rollout gate
and the status page.
"""
