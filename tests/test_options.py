"""Run parameters and their limits (slicer_cli/nuclei/options.py): every raise is tried."""
from __future__ import annotations

import math

import pytest

from slicer_cli.nuclei.errors import OptionsError, SlideError
from slicer_cli.nuclei.options import (
    LIMITS,
    AnalysisOptions,
    check_region,
    check_scheduler,
    check_slide_size,
    safe_address,
)


def test_defaults_are_valid():
    options = AnalysisOptions()
    assert options.region is None and options.max_slide_px == LIMITS["max_slide_px"][1]


@pytest.mark.parametrize("field, value", [
    ("slide_mpp", 0.05), ("slide_mpp", 5.0), ("slide_mpp", 0), ("slide_mpp", None),
    ("tile_size_px", 256), ("tile_size_px", 4096), ("tile_size_px", 0),
    ("batch_size", 1), ("batch_size", 64), ("workers", 0), ("workers", 64),
    ("min_tissue_fraction", 0.0), ("min_tissue_fraction", 1.0), ("overlap_px", 0),
    ("max_slide_px", 1.0),
])
def test_values_at_the_limits_are_accepted(field, value):
    AnalysisOptions(**{field: value})


@pytest.mark.parametrize("field, value, message", [
    ("slide_mpp", 1e6, "--slide-mpp must be within [0.05, 5]"),
    ("slide_mpp", 0.01, "--slide-mpp must be within"),
    ("slide_mpp", -1.0, "--slide-mpp must be within"),
    ("slide_mpp", math.nan, "--slide-mpp must be a finite number"),
    ("slide_mpp", math.inf, "--slide-mpp must be a finite number"),
    ("slide_mpp", "fast", "--slide-mpp must be a number"),
    ("tile_size_px", 100, "--tile-size must be within [256, 4096]"),
    ("tile_size_px", 10 ** 9, "--tile-size must be within"),
    ("tile_size_px", 512.5, "--tile-size must be an integer"),
    ("batch_size", 0, "--batch-size must be within [1, 64]"),
    ("batch_size", True, "--batch-size must be an integer"),
    ("workers", -1, "--workers must be within [0, 64]"),
    ("workers", 100_000, "--workers must be within"),
    ("min_tissue_fraction", 1.5, "--min-tissue-fraction must be within"),
    ("max_slide_px", 1e12, "--max-slide-px must be within"),
    ("overlap_px", -4, "--overlap must be >= 0"),
    ("overlap_px", math.nan, "--overlap must be a finite number"),
    ("triton_url", "ftp://host", "--triton-url must be http://, https:// or grpc://"),
    ("triton_url", "host:8001", "--triton-url must be"),
])
def test_bad_values_are_refused(field, value, message):
    with pytest.raises(OptionsError) as error:
        AnalysisOptions(**{field: value})
    assert message in str(error.value)


@pytest.mark.parametrize("region, expected", [
    ((-1, -1, -1, -1), None),
    ([0, 0, 10, 20], (0.0, 0.0, 10.0, 20.0)),
    (("5", "6", "7", "8"), (5.0, 6.0, 7.0, 8.0)),
])
def test_region_is_normalised(region, expected):
    assert check_region(region) == expected
    if expected is not None:
        assert AnalysisOptions(region=region).region == expected


@pytest.mark.parametrize("region, message", [
    ((0, 0, 10), "needs four numbers"),
    (("a", 0, 1, 1), "needs four numbers"),
    (5, "needs four numbers"),
    ((math.nan, 0, 1, 1), "four finite numbers"),
    ((0, 0, math.inf, 1), "four finite numbers"),
    ((-5, 0, 10, 10), "left and top must be >= 0"),
    ((0, 0, 0, 10), "width and height > 0"),
    ((0, 0, 3e9, 10), "reaches beyond"),
])
def test_bad_regions_are_refused(region, message):
    with pytest.raises(OptionsError, match=message):
        check_region(region)


@pytest.mark.parametrize("address", ["local:", "local:4", "tcp://10.0.0.1:8786",
                                     "tls://scheduler.example:8786", "ucx://[::1]:13337"])
def test_scheduler_addresses_accepted(address):
    check_scheduler(address)


@pytest.mark.parametrize("address, message", [
    ("local:0", "needs 1 <= N <= 64"),
    ("local:1000", "needs 1 <= N <= 64"),
    ("local:x", "must be local:N"),
    ("http://host:8786", "must be local:N"),
    ("tcp://host:99999", "malformed address"),
    ("tcp://:8786", "no host"),
    ("tcp://bob:pw@host:8786", "holds no credentials"),
])
def test_scheduler_addresses_refused_without_echo(address, message):
    with pytest.raises(OptionsError, match=message) as error:
        check_scheduler(address)
    assert "pw@" not in str(error.value)


@pytest.mark.parametrize("url, shown", [
    ("http://alice:secret@triton.example:8000/v2?key=k", "http://triton.example:8000"),
    ("grpc://10.0.0.5:8001", "grpc://10.0.0.5:8001"),
    ("https://[::1]:443/x", "https://[::1]:443"),
    ("http://host:notaport", "http://..."),
    ("local:4", "local:4"),
    ("", ""),
    (None, ""),
])
def test_safe_address_drops_credentials_paths_and_queries(url, shown):
    assert safe_address(url) == shown


def test_slide_size_limit():
    check_slide_size(1000, 1000, 1e6)
    with pytest.raises(SlideError, match="the slide declares 1001 x 1000 pixels, more than"):
        check_slide_size(1001, 1000, 1e6)
    with pytest.raises(SlideError, match="2000 x 2000 pixels"):
        check_slide_size(1000, 1000, 1e6, scale=2.0, what="covers")
    with pytest.raises(SlideError):
        check_slide_size(math.nan, 1, 1e6)
