"""The tools around the daemon: the demo, its traffic, the embedded broker, record, replay
and its report.
"""
