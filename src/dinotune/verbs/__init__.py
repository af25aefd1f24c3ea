"""Top-level commands as plain functions (`run_<verb>(config) -> output folder`); the CLI only parses
arguments, loads the config with `dinotune.config.load_config` and calls them."""
