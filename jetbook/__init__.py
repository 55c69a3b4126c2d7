"""The thin shell: CLI, settings, the embedded nats-server, and process wiring."""

__version__ = "0.1.0"
