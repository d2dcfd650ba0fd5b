"""Configuration: the settings file, the monitoring policy, and how a bad one is explained."""
