"""trigmail: send the right email at the right moment, and never twice."""

__version__ = "0.1.0"
