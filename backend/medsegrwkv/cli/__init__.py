"""Command-line interface: `medsegrwkv <command>`."""
