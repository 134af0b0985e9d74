"""Named errors raised at the engine's boundaries.

Every error the engine raises on bad input derives from :class:`AnalysisError`, so the CLI
can print one readable line and exit non-zero without a traceback.
"""


class AnalysisError(Exception):
    """Base class of every error the engine reports to a user."""


class SlideError(AnalysisError):
    """The slide is missing, unreadable, corrupt or lacks a needed property."""


class ResolutionError(SlideError):
    """The slide has no usable resolution (um/px) and none was given."""


class RegionError(AnalysisError):
    """The requested region of interest does not overlap the slide."""


class ModelError(AnalysisError):
    """The model repository or a served model does not honour the model contract."""


class BackendError(AnalysisError):
    """The inference backend failed (server unreachable, died, or refused a request)."""


class OutputError(AnalysisError):
    """An output file cannot be written."""


class OptionsError(AnalysisError):
    """A run parameter is non-finite, out of range or malformed."""
