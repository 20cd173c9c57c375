"""jaxregion: find, measure, break and protect the linguistic regions of LLMs."""

__version__ = "0.1.0"
