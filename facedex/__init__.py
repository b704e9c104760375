"""facedex: open 1:N face identification at scale."""

__version__ = "0.1.0"
