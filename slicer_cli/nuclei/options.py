"""The parameters of one run, and the limits every entry point enforces.

:data:`LIMITS` is the single statement of the numeric ranges: the CLI XML's ``<constraints>``
repeat them (a test compares the two), the Girder plugin checks a request against the XML
before anything is queued, and :class:`AnalysisOptions` checks them again here, so a value
that reaches the engine by any route (CLI, REST, Python) is finite and in range.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import OptionsError

#: ``{option: (minimum, maximum)}``; an option left at its "automatic" value (``None``, or 0
#: for ``slide_mpp`` / ``tile_size_px`` / ``workers``) is not checked against its range
LIMITS: dict[str, tuple[float, float]] = {
    # um/px: 0.05 is beyond any scanner's 100x; at 5 um/px a nucleus is two pixels wide
    "slide_mpp": (0.05, 5.0),
    # model pixels: below 256 the overlap would eat the tile, above 4096 one tile's maps
    # take over 0.5 GB of memory
    "tile_size_px": (256, 4096),
    "batch_size": (1, 64),
    "workers": (0, 64),
    "min_tissue_fraction": (0.0, 1.0),
    # base pixels of a slide (declared size) and model pixels of the analysed area;
    # 5e10 is a 224k x 224k slide, larger than any real 40x scan
    "max_slide_px": (1.0, 5e10),
}
#: the network graphs a run may ask for on the CPU (``backends.local.LocalBackend``)
PRECISIONS = ("auto", "float", "int8")
#: largest coordinate a region may name (large_image's base pixels are int32)
MAX_COORDINATE = 2 ** 31 - 1
#: local dask cluster size limit (``local:N``)
MAX_LOCAL_WORKERS = 64
_LOCAL = re.compile(r"local:(\d{0,6})")


@dataclass(frozen=True)
class AnalysisOptions:
    """Parameters of one run (all optional; defaults come from the model).

    Raises
    ------
    OptionsError
        On construction, when a value is non-finite, out of :data:`LIMITS`, or malformed.
    """

    region: tuple[float, float, float, float] | None = None
    slide_mpp: float | None = None
    triton_url: str | None = None
    model_name: str | None = None
    model_dir: str | None = None
    batch_size: int = 2
    tile_size_px: int | None = None
    overlap_px: int | None = None
    stain_normalize: bool = False
    test_time_flips: bool = False
    test_time_shifts: bool = False
    grid_anchor: bool = True
    min_tissue_fraction: float = 0.01
    scheduler: str | None = None
    workers: int = 0
    parquet: bool = True
    max_slide_px: float = LIMITS["max_slide_px"][1]
    device: str = "cpu"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.region is not None:
            object.__setattr__(self, "region", check_region(self.region))
        for name in ("slide_mpp", "tile_size_px"):
            value = getattr(self, name)
            if value is not None and value != 0:
                _in_range(name, value)
        for name in ("batch_size", "workers", "min_tissue_fraction", "max_slide_px"):
            _in_range(name, getattr(self, name))
        if self.overlap_px is not None:
            _finite("overlap_px", self.overlap_px)
            if self.overlap_px < 0:
                raise OptionsError(f"{_flag('overlap_px')} must be >= 0")
        for name in ("batch_size", "workers", "tile_size_px", "overlap_px"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) != value):
                raise OptionsError(f"{_flag(name)} must be an integer, not {value!r}")
        if self.scheduler:
            check_scheduler(self.scheduler)
        if self.device not in ("auto", "cpu", "cuda"):
            raise OptionsError(f"--device must be auto, cpu or cuda, not {self.device!r}")
        if self.precision not in PRECISIONS:
            raise OptionsError(f"--precision must be one of {', '.join(PRECISIONS)}, not "
                               f"{self.precision!r}")
        if self.triton_url:
            scheme = self.triton_url.split("://", 1)[0].lower() if "://" in self.triton_url \
                else ""
            if scheme not in ("http", "https", "grpc"):
                raise OptionsError("--triton-url must be http://, https:// or grpc://host:port")


def _flag(name: str) -> str:
    return "--" + {"tile_size_px": "tile-size", "overlap_px": "overlap"}.get(
        name, name.replace("_", "-"))


def _finite(name: str, value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as e:
        raise OptionsError(f"{_flag(name)} must be a number, not {value!r}") from e
    if not math.isfinite(number):
        raise OptionsError(f"{_flag(name)} must be a finite number, not {value!r}")
    return number


def _in_range(name: str, value) -> None:
    number = _finite(name, value)
    low, high = LIMITS[name]
    if not low <= number <= high:
        raise OptionsError(f"{_flag(name)} must be within [{low:g}, {high:g}], not {value!r}")


def check_region(region) -> tuple[float, float, float, float] | None:
    """Validate a region of interest ``(left, top, width, height)`` in base pixels.

    All four equal to -1 (slicer_cli_web's "no region") means the whole slide.

    Returns
    -------
    tuple of float or None
        The region, or None for the whole slide.

    Raises
    ------
    OptionsError
        Not four finite numbers, a negative left/top, an empty or gigantic size.
    """
    try:
        values = tuple(float(v) for v in region)
    except (TypeError, ValueError) as e:
        raise OptionsError("--region needs four numbers: left,top,width,height") from e
    if len(values) != 4:
        raise OptionsError("--region needs four numbers: left,top,width,height")
    if not all(math.isfinite(v) for v in values):
        raise OptionsError(f"--region must be four finite numbers, not {list(region)}")
    if all(v == -1 for v in values):
        return None
    left, top, width, height = values
    if left < 0 or top < 0 or width <= 0 or height <= 0:
        raise OptionsError(f"--region {list(values)}: left and top must be >= 0, width and "
                           "height > 0 (or all -1 for the whole slide)")
    if left + width > MAX_COORDINATE or top + height > MAX_COORDINATE:
        raise OptionsError(f"--region {list(values)} reaches beyond {MAX_COORDINATE} pixels")
    return values


def check_scheduler(address: str) -> None:
    """A dask scheduler address is ``local:N`` or ``tcp://``/``tls://``/``ucx://host:port``.

    Raises
    ------
    OptionsError
        On anything else (the address itself is never echoed: it may carry credentials).
    """
    match = _LOCAL.fullmatch(address)
    if match:
        if match.group(1) and not 1 <= int(match.group(1)) <= MAX_LOCAL_WORKERS:
            raise OptionsError(f"--scheduler local:N needs 1 <= N <= {MAX_LOCAL_WORKERS}")
        return
    scheme = address.split("://", 1)[0].lower() if "://" in address else ""
    if scheme not in ("tcp", "tls", "ucx", "inproc"):
        raise OptionsError("--scheduler must be local:N or tcp://host:port (tls://, ucx://)")
    try:
        parts = urlsplit(address)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as e:
        raise OptionsError(f"--scheduler: malformed address ({scheme}://...)") from e
    if not parts.hostname:
        raise OptionsError(f"--scheduler: no host in the address ({scheme}://...)")
    if parts.username or parts.password or "@" in parts.netloc:
        raise OptionsError("--scheduler: a dask address holds no credentials (use tls:// "
                           "with certificates)")


def safe_address(url: str | None) -> str:
    """``scheme://host:port`` of an endpoint URL: what may be printed, logged or stored.

    User names, passwords, paths and queries are dropped; a URL that does not parse is
    shown as its scheme only.
    """
    if not url:
        return ""
    if _LOCAL.fullmatch(url):
        return url
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return f"{scheme}://..."
    if not host:
        return f"{scheme}://..."
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def check_slide_size(width: float, height: float, limit: float, scale: float = 1.0,
                     what: str = "the slide declares") -> None:
    """Refuse an area over ``limit`` pixels (``scale``: pixels per base pixel).

    Called with the slide's declared size (base pixels), and with the analysed area at the
    model's resolution, before any plan is made.

    Raises
    ------
    SlideError
        Naming the size and the limit.
    """
    from .errors import SlideError

    area = float(width) * float(height) * scale * scale
    if not area <= limit:
        raise SlideError(f"{what} {width * scale:.0f} x {height * scale:.0f} pixels, more than "
                         f"the limit of {limit:.3g} (--max-slide-px)")
