"""Run Girder 3.2.18 on mongomock 4.3.0: the shims of docs/DESIGN.md section 5.

Three make Girder work at all; the fourth (:func:`_cursor_next`) makes reading N documents
O(N) instead of O(N^2), so that scale tests measure the plugin and the viewer, not the
stand-in database.

FOR TESTS AND THE DEV STACK ONLY, never for production (production uses a real MongoDB; see
docker/docker-compose.yml). The shims were written for exactly these versions and refuse to
patch anything else: a newer mongomock or Girder may have closed (or moved) the gaps.
"""
from __future__ import annotations

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
