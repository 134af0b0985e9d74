"""The NucleusAnalysis slicer CLI: its XML and its short ``main`` (run as a script)."""
