"""Slicer CLIs of the nucleus analysis and the engine they call (``slicer_cli.nuclei``)."""
