"""fieldgate gateway: the supervisor, config loading and validation, compose rendering, the CLI."""
