"""The ``driftwarden`` command line, one module per subcommand family."""
