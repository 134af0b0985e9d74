"""Run Girder 3.2.18 on mongomock 4.3.0: the shims of docs/DESIGN.md section 5.

Three make Girder work at all; the fourth (:func:`_cursor_next`) makes reading N documents
O(N) instead of O(N^2), the fifth (:class:`ElementIndex`) gives large_image's element
queries what MongoDB's indexes on ``annotationelement`` give a real DSA (the elements of one
annotation, and of those the ones a bounding-box range can match, without scanning the
collection), the sixth (:func:`patch_datetimes`) copies an inserted document without
walking every number of its outlines one by one, and the seventh (:func:`_insert_many`) puts
what the in-process database holds out of the garbage collector's reach (a real database's
documents are not in Girder's heap), so that scale tests measure the plugin and the viewer,
not the stand-in database.

FOR TESTS AND THE DEV STACK ONLY, never for production (production uses a real MongoDB; see
docker/docker-compose.yml). The shims were written for exactly these versions and refuse to
patch anything else: a newer mongomock or Girder may have closed (or moved) the gaps.
"""
from __future__ import annotations

import math

import numpy as np

#: versions the shims were written for
PINNED = {"mongomock": "4.3.0", "girder": "3.2.18"}


class ShimVersionError(RuntimeError):
    """mongomock or Girder is not the version the shims were written for."""


def check_versions(versions: dict[str, str] | None = None) -> None:
    """Refuse to shim other versions than :data:`PINNED`.

    Parameters
    ----------
    versions : dict, optional
        ``{package: version}`` to check; default: the installed ones.

    Raises
    ------
    ShimVersionError
        On any version other than the pinned one.
    """
    if versions is None:
        import importlib.metadata as md

        versions = {name: md.version(name) for name in PINNED}
    wrong = {k: v for k, v in versions.items() if PINNED.get(k) != v}
    if wrong:
        raise ShimVersionError(
            "the mongomock shims are written for "
            + ", ".join(f"{k}=={v}" for k, v in PINNED.items())
            + "; found " + ", ".join(f"{k}=={v}" for k, v in wrong.items())
            + " (set MONGO_URI to run on a real MongoDB instead)")


def _cursor_count(self, with_limit_and_skip: bool = False) -> int:
    """pymongo 3's ``Cursor.count``, which Girder adds to pymongo's Cursor (shim 1)."""
    params = {}
    if with_limit_and_skip and self._limit:
        params["limit"] = abs(self._limit)
    if with_limit_and_skip and self._skip:
        params["skip"] = self._skip
    return self.collection.count_documents(self._spec or {}, **params)


def _cursor_next(self):
    """mongomock's ``Cursor.__next__`` without its per-document copy of the result list.

    mongomock 4.3 slices ``results[skip:][:limit]`` for every document it returns: 9 us per
    document at 5k results, 100 us at 40k (a 274k-element annotation streamed at 130-190
    elements/s). The same documents, in the same order, by index into the cached list.
    """
    results = self._compute_results(with_limit_and_skip=False)
    index = (self._skip or 0) + self._emitted
    if (self._limit and self._emitted >= abs(self._limit)) or index >= len(results):
        raise StopIteration()
    self._emitted += 1
    return results[index]


#: the bounding-box bounds of large_image's region queries: field -> (operator, side)
_BBOX_BOUNDS = {"bbox.highx": "$gte", "bbox.lowx": "$lt", "bbox.highy": "$gte",
                "bbox.lowy": "$lt"}


class ElementIndex:
    """Index of a mongomock ``annotationelement`` store: documents by ``annotationId``, and
    per annotation (built when first asked, dropped when its documents change) arrays of the
    four bounding-box fields.

    It only narrows the candidates: mongomock still applies the whole filter to each of them,
    so a query returns exactly what a scan returns, in the store's order for one annotation's
    documents (what large_image asks: its element queries always name one annotation).
    """

    def __init__(self) -> None:
        import threading

        self.lock = threading.Lock()
        self.by_annotation: dict = {}   # annotationId -> {key: document} (insertion order)
        self.annotation_of: dict = {}   # key -> annotationId
        self.arrays: dict = {}          # annotationId -> (documents, {bbox field: array})

    def set(self, key, document) -> None:
        with self.lock:
            self._drop(key)
            annotation = document.get("annotationId") if isinstance(document, dict) else None
            if annotation is not None:
                self.by_annotation.setdefault(annotation, {})[key] = document
                self.annotation_of[key] = annotation
                self.arrays.pop(annotation, None)

    def delete(self, key) -> None:
        with self.lock:
            self._drop(key)

    def _drop(self, key) -> None:
        annotation = self.annotation_of.pop(key, None)
        if annotation is not None:
            self.by_annotation[annotation].pop(key, None)
            self.arrays.pop(annotation, None)

    def answer(self, filter: dict, applies):
        """The documents ``filter`` matches, in the store's order, or None when the index
        cannot tell (the filter names no single annotation).

        Where the filter holds only what the index keeps (the annotation, the ``_version``
        and the four bounds, as large_image asks: ``countElements`` and region queries),
        documents whose fields are plain numbers are decided from the arrays; every other
        candidate by ``applies`` (mongomock's own test), so the answer is a scan's, without a
        scan's 4 us per document (1 s per count of a 274k annotation). The arrays are built
        only for a filter that uses them."""
        annotation = filter.get("annotationId")
        if annotation is None or isinstance(annotation, dict):
            return None
        try:
            hash(annotation)
        except TypeError:
            return None
        bounds = _bounds(filter)
        version = filter.get("_version")
        exact = bounds is not None and set(filter) <= {"annotationId", "_version",
                                                       *_BBOX_BOUNDS} and (
            "_version" not in filter or _plain(version))
        with self.lock:
            docs = self.by_annotation.get(annotation)
            if not docs:
                return []
            if not exact and not bounds:  # nothing the arrays decide
                return [d for d in list(docs.values()) if applies(filter, d)]
            documents, values = self._arrays(annotation, docs)
        keep = np.ones(len(documents), bool)
        for field, bound in bounds.items():
            with np.errstate(invalid="ignore"):
                keep &= (values[field] >= bound) if _BBOX_BOUNDS[field] == "$gte" else (
                    values[field] < bound)
        keep = np.flatnonzero(keep | ~values["plain"])  # the arrays cannot rule those out
        if not exact:
            return [documents[i] for i in keep if applies(filter, documents[i])]
        decided = np.ones(len(keep), bool) if version is None else (
            values["_version"][keep] == float(version))
        return [documents[i] for i, p, ok in zip(keep, values["plain"][keep], decided)
                if (ok if p else applies(filter, documents[i]))]

    def _arrays(self, annotation, docs: dict):
        """``(documents, {field: array})`` of one annotation (call under the lock): the four
        bounds and ``_version`` as floats (NaN where not a plain number), and ``plain``, where
        all five are."""
        built = self.arrays.get(annotation)
        if built is None:
            documents = list(docs.values())
            values = {field: np.array([_bbox_value(d, field) for d in documents])
                      for field in _BBOX_BOUNDS}
            values["_version"] = np.array([_number(d.get("_version")) for d in documents])
            values["plain"] = np.isfinite(values["_version"])
            for field in _BBOX_BOUNDS:
                values["plain"] &= np.isfinite(values[field])
            built = self.arrays[annotation] = (documents, values)
        return built


def _bounds(filter: dict) -> dict | None:
    """The bounding-box bounds of a filter as large_image writes them (``{field: value}``), or
    None when it bounds a field in another form (the index does not evaluate that)."""
    bounds = {}
    for field, op in _BBOX_BOUNDS.items():
        cond = filter.get(field)
        if isinstance(cond, dict) and set(cond) == {op} and _plain(cond[op]):
            bounds[field] = float(cond[op])
        elif field in filter:
            return None
    return bounds


def _plain(value) -> bool:
    """A finite int or float (not a bool): what the index compares as MongoDB does."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value) and abs(value) < 2 ** 53  # exact as a float


def _number(value) -> float:
    return float(value) if _plain(value) else float("nan")


def _bbox_value(document: dict, field: str) -> float:
    """A bounding-box field as a float; NaN (matches no bound) when absent or not a number."""
    bbox = document.get("bbox")
    return _number(bbox.get(field.split(".", 1)[1])) if isinstance(bbox, dict) else float("nan")


def _index_of(store) -> ElementIndex | None:
    return getattr(store, "_shim_element_index", None)


def _by_id(store, filter):
    """The one document an ``_id`` equality can match (``[]`` for none), or None when the
    filter does not name one ``_id`` value: mongomock scans its whole collection for it (1.4 s
    per lookup in 592k elements, which large_image's version counter does on every save)."""
    if not isinstance(filter, dict) or "_id" not in filter:
        return None
    key = filter["_id"]
    from bson import ObjectId

    if not (key is None or type(key) in (ObjectId, str, int, float)):
        return None  # an operator, a regex, a bool, a list...: mongomock decides by a scan
    try:
        return [store[key]]  # expires TTL documents first, under the store's lock
    except KeyError:
        return []


def _patch_element_index(mongomock) -> None:
    """Shim 5: keep an :class:`ElementIndex` on every ``annotationelement`` store and answer
    that collection's queries from its candidates; a query naming one ``_id``, in any
    collection, from that key (:func:`_by_id`)."""
    from mongomock import filtering, store

    cls = store.CollectionStore
    if getattr(cls, "_shim_element_index_patched", False):
        return
    cls._shim_element_index_patched = True
    set_item, del_item, drop = cls.__setitem__, cls.__delitem__, cls.drop

    def index(self) -> ElementIndex | None:
        if self.name != "annotationelement":
            return None
        if _index_of(self) is None:
            built = ElementIndex()
            for key, document in list(self._documents.items()):
                built.set(key, document)
            self._shim_element_index = built
        return self._shim_element_index

    def __setitem__(self, key, val):
        set_item(self, key, val)
        found = index(self)
        if found is not None:
            found.set(key, val)

    def __delitem__(self, key):
        del_item(self, key)
        found = index(self)
        if found is not None:
            found.delete(key)

    def drop_(self):
        drop(self)
        self._shim_element_index = None

    cls.__setitem__, cls.__delitem__, cls.drop = __setitem__, __delitem__, drop_
    original = mongomock.collection.Collection._iter_documents

    def _iter_documents(self, filter):
        candidates = _by_id(self._store, filter)
        if candidates is not None:
            return (d for d in candidates if filtering.filter_applies(filter, d))
        found = index(self._store) if isinstance(filter, dict) else None
        answer = found.answer(filter, filtering.filter_applies) if found is not None else None
        return original(self, filter) if answer is None else iter(answer)

    mongomock.collection.Collection._iter_documents = _iter_documents


def _scalars() -> frozenset:
    from bson import ObjectId

    return frozenset({int, float, str, bool, type(None), bytes, ObjectId})


#: types mongomock's datetime patch returns unchanged (exact types, not subclasses)
_SCALARS = _scalars()


def patch_datetimes(value, _original=None):
    """mongomock's ``patch_datetime_awareness_in_document`` (shim 6), the same result faster.

    mongomock copies every inserted document through a recursive function that tests each
    value against five types: about 100 us for a nucleus outline, most of a 592k-nucleus
    ingest. Here plain values (numbers, strings, ObjectIds) are kept as they are, lists of
    them copied at once, dicts and lists recurse, and anything else (datetimes, timestamps,
    subclasses) goes to mongomock's own function.
    """
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _SCALARS else patch_datetimes(v, _original)
                for k, v in value.items()}
    if kind is list or kind is tuple:
        if set(map(type, value)) <= _SCALARS:
            return list(value)
        return [x if type(x) in _SCALARS else patch_datetimes(x, _original) for x in value]
    if kind in _SCALARS:
        return value
    import mongomock.helpers

    original = _original or _ORIGINAL.get("patch") or \
        mongomock.helpers.patch_datetime_awareness_in_document
    return original(value)


_ORIGINAL: dict = {}


def _insert_many(self, documents, *args, **kwargs):
    """mongomock's ``insert_many`` (shim 7), then ``gc.freeze()``: the stand-in keeps every
    document in Girder's own heap (592k nucleus outlines are some 20 million Python objects),
    and each full collection of the garbage collector would walk them all again."""
    import gc

    result = _ORIGINAL["insert_many"](self, documents, *args, **kwargs)
    gc.freeze()
    return result


def apply() -> None:
    """Patch pymongo/Girder/mongomock so Girder runs on an in-process mongomock database.

    Must run before Girder opens its database connection.

    Raises
    ------
    ShimVersionError
        When the installed versions are not the pinned ones.
    """
    check_versions()
    import girder.api.rest
    import mongomock
    import mongomock.collection
    import pymongo

    # 1. Cursor.count(), used all over Girder
    mongomock.collection.Cursor.count = _cursor_count
    # 4. O(1) per document read (see _cursor_next)
    mongomock.collection.Cursor.__next__ = _cursor_next
    mongomock.collection.Cursor.next = _cursor_next
    # 5. large_image's element queries, and any query naming one _id, from an index
    _patch_element_index(mongomock)
    # 6. inserted documents copied without a type test per number
    import mongomock.helpers

    if "patch" not in _ORIGINAL:
        _ORIGINAL["patch"] = mongomock.helpers.patch_datetime_awareness_in_document
        mongomock.helpers.patch_datetime_awareness_in_document = patch_datetimes
    # 7. the in-process database out of the garbage collector's reach
    if "insert_many" not in _ORIGINAL:
        _ORIGINAL["insert_many"] = mongomock.collection.Collection.insert_many
        mongomock.collection.Collection.insert_many = _insert_many
    # 2. list endpoints filter mongomock cursors like pymongo ones
    if mongomock.collection.Cursor not in girder.api.rest._MONGO_CURSOR_TYPES:
        girder.api.rest._MONGO_CURSOR_TYPES = (
            *girder.api.rest._MONGO_CURSOR_TYPES, mongomock.collection.Cursor)
    # 3. with_options(codec_options=CodecOptions(document_class=SemiRawDocument)) -> plain
    #    dicts, which large_image's element code indexes the same way
    original = mongomock.collection.Collection.with_options

    def with_options(self, codec_options=None, read_preference=None, write_concern=None,
                     read_concern=None):
        return original(self, None, read_preference, write_concern, read_concern)

    mongomock.collection.Collection.with_options = with_options
    # one in-process database for every MongoClient Girder creates
    clients: dict = {}

    def mongo_client(host=None, *args, **kwargs):
        if "client" not in clients:
            clients["client"] = mongomock.MongoClient(host or "mongodb://localhost/girder")
        return clients["client"]

    pymongo.MongoClient = mongo_client
