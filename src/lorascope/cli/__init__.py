"""The `lorascope` command: thin subcommands over the public Python API."""
