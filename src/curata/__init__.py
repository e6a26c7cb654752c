"""curata: classify, describe and search visual collections from their images and their text."""

__version__ = "0.1.0"
