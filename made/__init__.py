"""made: train, ship and serve MADE density models of binary data."""

__version__ = "0.1.0"
