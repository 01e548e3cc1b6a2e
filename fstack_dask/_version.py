"""Package version, in its own module so submodules can import it."""

__version__ = "0.1.0"
