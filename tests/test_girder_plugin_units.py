"""The plugin's pure parts, without a server: parameter validation, CLI description, shims."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("girder")

from girder.api.rest import RestException  # noqa: E402
from girder_nucleus_analysis import launch, plot_requests, registration  # noqa: E402

from tests.girder_stack import shims  # noqa: E402

XML = (Path(__file__).resolve().parents[1] / "slicer_cli" / "NucleusAnalysis" /
       "NucleusAnalysis.xml").read_bytes()
ENUM_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<executable><title>t</title><description>d</description><parameters><label>p</label>
<description>p</description>
<string-enumeration><name>mode</name><label>m</label><description>m</description>
<longflag>mode</longflag><default>a</default><element>a</element><element>b</element>
</string-enumeration></parameters></executable>"""


def test_arguments_use_flag_equals_value():
    args, values = launch.cli_arguments(XML, {
        "region": "[0, 10, 512, 256]", "batch_size": "8", "stain_normalize": "true",
        "min_tissue_fraction": 0.05, "tile_size": "2048", "slide_mpp": ""})
    assert sorted(args) == ["--batch-size=8", "--min-tissue-fraction=0.05",
                            "--region=0,10,512,256", "--stain-normalize=true",
                            "--tile-size=2048"]
    assert values["region"] == [0, 10, 512, 256] and values["stain_normalize"] is True


def test_whole_slide_region_and_defaults_add_nothing():
    assert launch.cli_arguments(XML, {"region": [-1, -1, -1, -1]}) == ([], {})
    # an old HistomicsUI form may still send an empty deployment field: nothing is chosen
    assert launch.cli_arguments(XML, {"region": "-1,-1,-1,-1", "scheduler": ""}) == ([], {})


def test_histomicsui_bindings_are_ignored_when_not_strict():
    params = {"inputImageFile": "abc", "outputFeatureFile": "f.csv",
              "outputFeatureFile_folder": "def", "workers": "2"}
    assert launch.cli_arguments(XML, params, strict=False)[0] == ["--workers=2"]
    with pytest.raises(RestException, match="Unknown parameter"):
        launch.cli_arguments(XML, params, strict=True)


@pytest.mark.parametrize("params, message", [
    ({"nope": 1}, "Unknown parameter(s) nope"),
    ({"stain_normalize": "maybe"}, "must be true or false"),
    ({"grid_anchor": "yes please"}, "must be true or false"),
    ({"batch_size": "four"}, "batch_size must be a number"),
    ({"batch_size": 2.5}, "batch_size must be an integer"),
    ({"batch_size": 65}, "must be within [1, 64]"),
    ({"min_tissue_fraction": "nan"}, "must be finite"),
    ({"region": "[1, 2"}, "region is not valid JSON"),
    ({"region": "a,b,c,d"}, "region must be four numbers"),
    ({"region": [1, 2, 3]}, "region must be four numbers"),
    ({"region": [-5, 0, 10, 10]}, "left and top must be >= 0"),
])
def test_bad_values_raise_readable_errors(params, message):
    with pytest.raises(RestException) as error:
        launch.cli_arguments(XML, params)
    assert message in str(error.value) and error.value.code == 400


@pytest.mark.security
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("name, value", [
    ("triton_url", "http://127.0.0.1:9/"), ("scheduler", "tcp://127.0.0.1:9"),
    ("model_name", "other_model"), ("model_dir", "/etc"), ("max_slide_px", "1e12")])
def test_deployment_settings_are_not_job_parameters(name, value, strict):
    """Both launch routes (strict: ours; not strict: HistomicsUI's submit) refuse them."""
    with pytest.raises(RestException) as error:
        launch.cli_arguments(XML, {name: value, "batch_size": 2}, strict=strict)
    assert error.value.code == 400 and "deployment settings" in str(error.value)
    assert value not in str(error.value)


@pytest.mark.security
@pytest.mark.parametrize("params, message", [
    ({"tile_size": "1e400"}, "tile_size must be finite"),
    ({"tile_size": 1e400}, "tile_size must be finite"),
    ({"tile_size": "Infinity"}, "tile_size must be finite"),
    ({"tile_size": "1e9"}, "tile_size must be within [256, 4096]"),
    ({"tile_size": 100}, "tile_size must be within [256, 4096]"),
    ({"slide_mpp": "1e6"}, "slide_mpp must be within [0, 5]"),
    ({"slide_mpp": "0.01"}, "--slide-mpp must be within [0.05, 5]"),
    ({"slide_mpp": "NaN"}, "slide_mpp must be finite"),
    ({"workers": -1}, "workers must be within [0, 64]"),
    ({"workers": 100000}, "workers must be within [0, 64]"),
    ({"batch_size": True}, "batch_size must be a number"),
    ({"min_tissue_fraction": 2}, "min_tissue_fraction must be within [0, 1]"),
    ({"region": "[NaN, 0, 10, 10]"}, "region must be four finite numbers"),
    ({"region": "nan,0,10,10"}, "region must be four finite numbers"),
    ({"region": [0, 0, 1e400, 10]}, "region must be four finite numbers"),
    ({"region": [0, 0, 3e9, 10]}, "reaches beyond"),
])
def test_non_finite_and_out_of_range_values_answer_400(params, message):
    with pytest.raises(RestException) as error:
        launch.cli_arguments(XML, params)
    assert error.value.code == 400
    assert message in str(error.value)


def test_xml_constraints_are_the_engine_limits():
    """One statement of the ranges: the XML (HistomicsUI's form, the server) and the engine."""
    from slicer_cli_web.cli_utils import as_model, get_cli_parameters

    from slicer_cli.nuclei.model import load_model_info
    from slicer_cli.nuclei.options import LIMITS

    _, params, _ = get_cli_parameters(as_model(XML))
    by_name = {p.name: p for p in params}
    engine = {"tile_size": "tile_size_px"}
    for name in ("batch_size", "tile_size", "workers", "min_tissue_fraction", "slide_mpp"):
        low, high = LIMITS[engine.get(name, name)]
        c = by_name[name].constraints
        assert float(c.maximum) == high, name
        # slide_mpp's 0 means "from the metadata", so the form must accept it
        assert float(c.minimum) == (0 if name == "slide_mpp" else low), name
    assert int(by_name["tile_size"].default) == load_model_info().tile_size


def test_enumeration_is_checked():
    assert launch.cli_arguments(ENUM_XML, {"mode": "b"})[0] == ["--mode=b"]
    with pytest.raises(RestException, match="mode must be one of a, b"):
        launch.cli_arguments(ENUM_XML, {"mode": "c"})


def test_describe_clis_asks_the_real_entry_point():
    clis = registration.describe_clis()
    assert list(clis) == ["NucleusAnalysis"]
    assert "<title>Nucleus Analysis</title>" in clis["NucleusAnalysis"]["xml"]


@pytest.mark.parametrize("command, message", [
    ("/nonexistent/python -m slicer_cli", "cannot run"),
    (f"{sys.executable} -c 'import sys; sys.exit(3)'", "exited 3"),
    (f"{sys.executable} -c 'print(42)'", "printed no CLI"),
    (f"{sys.executable} -c 'print(\"not json\")'", "did not print JSON"),
])
def test_describe_clis_failures_are_named(monkeypatch, command, message):
    monkeypatch.setenv("NUCLEUS_ANALYSIS_CLI", command)
    with pytest.raises(registration.RegistrationError, match=message):
        registration.describe_clis()


def test_shims_refuse_other_versions():
    shims.check_versions(dict(shims.PINNED))
    with pytest.raises(shims.ShimVersionError, match="found mongomock==5.0.0"):
        shims.check_versions({"mongomock": "5.0.0", "girder": "3.2.18"})


def test_cursor_shim_returns_the_same_documents_in_linear_time():
    import time

    import mongomock

    collection = mongomock.MongoClient().db.things
    collection.insert_many([{"i": i} for i in range(8_000)])
    expected = [d["i"] for d in collection.find({}, sort=[("i", -1)], skip=5, limit=6_000)]
    original = mongomock.collection.Cursor.__next__
    try:
        mongomock.collection.Cursor.__next__ = shims._cursor_next
        cursor = collection.find({}, sort=[("i", -1)], skip=5, limit=6_000)
        got = [d["i"] for d in cursor]
        assert got == expected == list(range(7_994, 1_994, -1))
        assert [d["i"] for d in collection.find({"i": {"$lt": 3}})] == [0, 1, 2]
        assert list(collection.find({"i": -1})) == []
        started = time.perf_counter()
        for _ in collection.find({}):
            pass
        per_doc = (time.perf_counter() - started) / 8_000
    finally:
        mongomock.collection.Cursor.__next__ = original
    print(f"\n8k documents read at {per_doc * 1e6:.1f} us each")


def test_density_counts_every_nucleus_once_in_a_valid_griddata_element():
    from girder_large_image_annotation.models.annotation import Annotation
    from girder_nucleus_analysis.annotation_stream import Density

    density = Density(1000, 300)        # long side 1000 px -> 64 px cells (the minimum)
    assert (density.cell, density.width, density.height) == (64, 16, 5)
    square = [[10, 10, 0], [20, 10, 0], [20, 20, 0], [10, 20, 0]]          # mean (15, 15)
    far = [[990, 290, 0], [1200, 400, 0]]                                # off the slide
    for _ in range(3):
        density.add("a", square)
    density.add("a", far)
    density.add("b", [[100, 70, 0], [110, 80, 0]])                       # mean (105, 75)
    a = density.element("a", "rgb(0,160,0)")
    assert sum(a["values"]) == 4 and a["user"]["nuclei"] == 4
    assert len(a["values"]) == 16 * 5 and a["gridWidth"] == 16
    assert a["values"][0] == 3 and a["values"][-1] == 1  # clipped into the last cell
    b = density.element("b", "#0078ff")
    assert b["values"][1 * 16 + 1] == 1 and sum(b["values"]) == 1
    assert b["colorRange"] == ["rgba(0, 120, 255, 0)", "rgba(0, 120, 255, 0.85)"]
    for element in (a, b):
        Annotation.validatorAnnotationElement.validate(element)
    big = Density(66560, 47104)
    assert big.cell == 260 and big.width == 256 and big.height == 182


def test_element_index_shim_answers_exactly_what_a_scan_answers():
    import mongomock
    import numpy as np

    def elements(collection):
        rng = np.random.default_rng(7)
        docs = []
        for i in range(3_000):
            x, y = rng.uniform(0, 10_000, 2)
            w, h = rng.uniform(5, 40, 2)
            docs.append({"annotationId": f"a{i % 3}", "_version": i % 2, "n": i,
                         "bbox": {"lowx": x, "highx": x + w, "lowy": y, "highy": y + h}})
        docs.append({"annotationId": "a0", "_version": 0, "n": -1})       # no bbox at all
        # what the arrays cannot decide: mongomock's own test decides, as in a scan
        docs.append({"annotationId": "a0", "_version": 0, "n": -2, "bbox": {
            "lowx": True, "highx": 9e3, "lowy": 0.0, "highy": 9e3}})
        docs.append({"annotationId": "a0", "_version": "0", "n": -3, "bbox": {
            "lowx": 2500.0, "highx": 2600.0, "lowy": 5000.0, "highy": 5100.0}})
        docs.append({"annotationId": "a0", "_version": [0, 1], "n": -4, "bbox": {
            "lowx": [2500.0], "highx": 2600.0, "lowy": 5000.0, "highy": 5100.0}})
        docs.append({"annotationId": "a0", "n": -5, "bbox": "none"})
        collection.insert_many(docs)

    queries = [
        {"annotationId": "a1", "_version": 1},
        {"annotationId": "a0", "_version": 0, "bbox.highx": {"$gte": 2000.0},
         "bbox.lowx": {"$lt": 3000.0}, "bbox.highy": {"$gte": 4000.0},
         "bbox.lowy": {"$lt": 6500.0}},
        {"annotationId": "a2", "bbox.lowx": {"$lt": 100.0}},
        {"annotationId": "a0", "bbox.highx": {"$gte": 1e9}},
        {"annotationId": "zz"},
        {"annotationId": {"$in": ["a0", "a2"]}, "bbox.lowy": {"$lt": 500.0}},   # not indexed
        {"n": {"$lt": 10}},
        # large_image's countElements and region query: annotation, version, bounds
        {"annotationId": "a0", "_version": 0},
        {"annotationId": "a0", "_version": 1, "bbox.highx": {"$gte": 2000.0},
         "bbox.lowx": {"$lt": 3000.0}, "bbox.highy": {"$gte": 4000.0},
         "bbox.lowy": {"$lt": 6500.0}},
        {"annotationId": "a0", "_version": 0, "bbox.lowx": {"$lt": 2.0}},
        {"annotationId": "a0", "_version": 7},
        {"annotationId": "a0", "_version": "0"},
        {"annotationId": "a0", "_version": 0.0, "bbox.lowx": {"$gt": 9000.0}},   # not kept
        {"annotationId": "a0", "_version": 0, "bbox.lowx": {"$lt": "z"}},
        {"annotationId": "a0", "_version": {"$gte": 0}, "n": {"$lt": 0}},
    ]
    plain = mongomock.MongoClient().db.annotationelement
    elements(plain)
    expected = [[d["n"] for d in plain.find(q)] for q in queries]
    assert len(expected[1]) >= 5 and expected[3] == [] and expected[4] == []
    shims._patch_element_index(mongomock)
    indexed = mongomock.MongoClient().db.annotationelement
    elements(indexed)
    assert [[d["n"] for d in indexed.find(q)] for q in queries] == expected
    assert [indexed.count_documents(q) for q in queries] == [len(e) for e in expected]
    # the odd documents are decided as mongomock decides them: a list matches by any of its
    # values, a bool or a string is no number, a missing field matches no bound
    assert {-1, -2, -4} <= set(expected[7]) and not {-3, -5} & set(expected[7])
    assert -4 in expected[1] and expected[9] == [] and expected[11] == [-3]
    assert expected[14] == [-1, -2, -4]
    # it follows deletes and inserts, and a dropped collection
    indexed.delete_many({"annotationId": "a0", "bbox.lowx": {"$lt": 5000.0}})
    plain.delete_many({"annotationId": "a0", "bbox.lowx": {"$lt": 5000.0}})
    indexed.insert_one({"annotationId": "a0", "n": 99_999, "bbox": {
        "lowx": 2500.0, "highx": 2600.0, "lowy": 5000.0, "highy": 5100.0}})
    plain.insert_one({"annotationId": "a0", "n": 99_999, "bbox": {
        "lowx": 2500.0, "highx": 2600.0, "lowy": 5000.0, "highy": 5100.0}})
    assert [[d["n"] for d in indexed.find(q)] for q in queries] == \
        [[d["n"] for d in plain.find(q)] for q in queries]
    indexed.drop()
    assert list(indexed.find({"annotationId": "a1"})) == []


def test_id_lookup_shim_answers_exactly_what_a_scan_answers():
    import re

    import mongomock
    from bson import ObjectId
    from mongomock.filtering import filter_applies

    shims._patch_element_index(mongomock)
    for name in ("annotationelement", "item"):
        collection = mongomock.MongoClient().db[name]
        ids = collection.insert_many([{"annotationId": "a", "n": i, "_version": i}
                                      for i in range(500)]).inserted_ids
        collection.insert_many([{"_id": 1, "n": -1}, {"_id": str(ids[3]), "n": -2}])
        missing = ObjectId()
        queries = [{"_id": ids[7]}, {"_id": ids[7], "n": 7}, {"_id": ids[7], "n": 8},
                   {"_id": missing}, {"_id": str(ids[7])}, {"_id": {"$in": ids[3:6]}},
                   {"_id": {"$ne": ids[0]}, "n": {"$lt": 3}}, {"_id": None},
                   {"annotationId": "a", "_id": ids[499]}, {"_id": 1}, {"_id": True},
                   {"_id": re.compile("^" + str(ids[3])[:20])}]
        for query in queries:
            scan = [d["n"] for d in collection._store.documents if filter_applies(query, d)]
            assert [d["n"] for d in collection.find(query)] == scan, query
        # large_image's version counter: find_one_and_update by _id, $inc
        before = collection.find_one_and_update({"_id": ids[9]}, {"$inc": {"_version": 1}})
        assert before["_version"] == 9
        assert collection.find_one({"_id": ids[9]})["_version"] == 10
        assert collection.find_one_and_update({"_id": missing}, {"$inc": {"n": 1}}) is None
        collection.delete_one({"_id": ids[9]})
        assert collection.find_one({"_id": ids[9]}) is None
        assert collection.count_documents({}) == 501


def test_datetime_shim_copies_documents_as_mongomock_does():
    import collections
    import datetime

    import mongomock.helpers
    from bson import ObjectId

    original = (shims._ORIGINAL.get("patch")
                or mongomock.helpers.patch_datetime_awareness_in_document)
    aware = datetime.datetime(2026, 12, 2, 7, 0, 1, 123456,
                              tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    naive = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901)
    points = [[1.5, 2.0, 0], [3, 4.25, 0]]
    doc = {"_id": ObjectId(), "created": aware, "n": 3, "ok": True, "none": None,
           "element": {"type": "polyline", "points": points, "user": {"id": 7, "when": naive}},
           "tuple": (1, naive), "od": collections.OrderedDict([("a", aware), ("b", [1, 2])]),
           "mixed": [1, "x", [naive, 2.5], {"k": aware}], "empty": [], "blob": b"\0"}
    got = shims.patch_datetimes(doc, original)
    assert got == original(doc)
    assert type(got["od"]) is collections.OrderedDict and got["created"].tzinfo is None
    assert got["created"] == datetime.datetime(2026, 12, 2, 5, 0, 1, 123000)
    # a copy: changing what was inserted changes nothing stored
    got["element"]["points"][0][0] = -1.0
    assert points[0][0] == 1.5


class _Request:
    """What claim() needs of large_image's PlottableItemData: its ``cancel`` flag."""
    cancel = False


@pytest.fixture
def plot_pages(monkeypatch):
    """plot_requests with no page remembered, installed into the real large_image."""
    monkeypatch.setattr(plot_requests, "_newest", type(plot_requests._newest)())
    from girder_large_image_annotation import utils
    monkeypatch.setattr(utils, "_cancelPlottableItemData", utils._cancelPlottableItemData)
    assert plot_requests.install()
    assert utils._cancelPlottableItemData is plot_requests.claim
    yield plot_requests
    monkeypatch.setattr(plot_requests, "_installed", False)


def test_plot_request_uuids_are_the_users_and_the_routes_and_numbered(plot_pages):
    run = plot_pages.run_uuid
    assert run("page-a", "2", "list", "u1") == "u1:list:page-a#2"
    assert run("page-a", "2", "data", "u1") == "u1:data:page-a#2"
    assert run("page-a#7", "3", "list", None) == "None:list:page-a#7#3"
    for uuid, seq in (("page-a", None), ("", "9"), (None, "9"), ("page-a", "x"),
                      ("page-a", "0"), ("page-a", "-4"), ("page-a", str(2 ** 60)),
                      (["page-a"], "9"), ("page-a", ["9"])):
        assert run(uuid, seq, "list", "u1") is None, (uuid, seq)


def test_a_plot_request_may_cancel_only_older_ones_of_its_page(plot_pages):
    """Metadata Plot's requests (plot_requests.py): the newest of a page to start cancels the
    older one still running; one that starts after a newer one cancels nothing."""
    run, claim = plot_pages.run_uuid, plot_pages.claim
    first, second, third = _Request(), _Request(), _Request()
    claim(run("page-a", "1", "list", "u1"), first)
    claim(run("page-a", "2", "list", "u1"), second)
    assert first.cancel and not second.cancel
    claim(run("page-a", "2", "list", "u1"), third)  # the same one twice
    claim(run("page-a", "1", "list", "u1"), third)  # aborted, started late
    assert not second.cancel and not third.cancel
    others = [_Request() for _ in range(3)]
    claim(run("page-a", "1", "data", "u1"), others[0])  # routes counted apart
    claim(run("page-a", "1", "list", "u2"), others[1])  # users apart
    claim(None, others[2])                               # no uuid: large_image's own None
    claim("page-a", others[2])                           # not tagged: runs whole
    assert not second.cancel and not any(r.cancel for r in others)
    claim(run("page-a", "3", "list", "u1"), third)
    assert second.cancel


def test_requests_that_pass_the_event_in_one_order_and_start_in_the_other(plot_pages):
    """What CI saw: the page aborts request 1 and sends 2 at once; both pass the route's
    event (run_uuid) before either starts, and 1 starts last. The live one, 2, must answer
    whole; 1 (the page has given it up) too."""
    older = plot_pages.run_uuid("page-b", "1", "list", "u1")
    newer = plot_pages.run_uuid("page-b", "2", "list", "u1")
    live, late = _Request(), _Request()
    plot_pages.claim(newer, live)
    plot_pages.claim(older, late)
    assert not live.cancel and not late.cancel


def test_plot_request_pages_are_forgotten_oldest_first(plot_pages, monkeypatch):
    monkeypatch.setattr(plot_pages, "KEEP", 3)
    for page in "abcd":
        plot_pages.claim(plot_pages.run_uuid(page, "5", "list", None), _Request())
    assert len(plot_pages._newest) == 3 and "None:list:a" not in plot_pages._newest
    late = _Request()
    plot_pages.claim(plot_pages.run_uuid("a", "1", "list", None), late)  # forgotten: newest
    assert plot_pages._newest["None:list:a"][0] == 1
    plot_pages.claim(plot_pages.run_uuid("d", "1", "list", None), late)
    assert plot_pages._newest["None:list:d"][0] == 5


def test_an_unknown_large_image_leaves_every_plot_request_whole(monkeypatch):
    from girder_large_image_annotation import utils
    monkeypatch.setattr(utils, "PlottableItemData", type("PlottableItemData", (), {}))
    assert not plot_requests.install()
    assert plot_requests.run_uuid("page-a", "1", "list", "u1") is None
