"""One module per CLI verb family, over :mod:`pipeline.commands.common`."""
