"""Metadata Plot's requests: which one may cancel which.

HistomicsUI's Metadata Plot sends ``POST annotation/item/<id>/plot/list`` (the columns) and
``plot/data`` (the points) with one ``uuid`` per page. large_image cancels the running request
of a ``uuid`` when another with that ``uuid`` *starts*, and the cancelled one still answers
200 with what it had found so far (on the CMU slide: 49 of 66 columns, none of the feature
table's). The page aborts its previous request before it sends the next, but on a busy server
the aborted one can start last: it then cut the live one short, and the dialog never offered
area, circularity... until a reload.

The plugin's client numbers these requests in the order the page sends them (``seq``, per
route; ``client/plotRequests.js``). Two steps here:

* before large_image sees a request (``run_uuid``, from the route's ``.before`` event), its
  ``uuid`` is made the user's and the route's own (so that a plot/data never cancels a
  plot/list, nor one user another's) and tagged with its number; one without ``seq``
  (another client) loses its ``uuid``: it cancels nothing and answers whole;
* when large_image starts the request (``claim``, which takes the place of large_image's
  ``_cancelPlottableItemData``), the newest request of its page cancels the older one still
  running, which the page has given up, as large_image intends; a request that starts after
  a newer one of its page cancels nothing and answers whole.

The order is decided where large_image registers the request, under one lock: two requests
sent back to back can pass the ``.before`` event in one order and start in the other (CI saw
the older one, started last, cut the live one short when the decision was taken at the
event).
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict

from girder import logger

#: pages remembered (uuid x route x user); the oldest are forgotten first
KEEP = 10_000
#: largest ``seq`` taken as a number (JavaScript's exact integers)
MAX_SEQ = 2 ** 53
#: between a page's key and the request's number in the uuid large_image sees
SEP = "#"

#: per page: the newest number started, and that request (large_image's PlottableItemData)
_newest: OrderedDict[str, tuple[int, weakref.ref]] = OrderedDict()
_lock = threading.Lock()
#: whether large_image starts its requests through ``claim`` (``install``)
_installed = False


def run_uuid(uuid: object, seq: object, route: str, user_id: object) -> str | None:
    """The ``uuid`` large_image should see for this request, or None (run it whole).

    Parameters
    ----------
    uuid, seq
        The request's parameters (any type: they come from the request).
    route : str
        ``list`` or ``data``.
    user_id
        The requesting user's id (None when anonymous).
    """
    if not _installed or not isinstance(uuid, str) or not uuid or not isinstance(seq, str):
        return None
    try:
        number = int(seq)
    except ValueError:
        return None
    if not 0 < number <= MAX_SEQ:
        return None
    return f"{user_id}:{route}:{uuid}{SEP}{number}"


def claim(uuid: object, record: object) -> None:
    """Start ``record`` (a request's PlottableItemData) under ``uuid``, as ``run_uuid`` made it:
    cancel the older request of its page still running, unless a newer one has started."""
    if not isinstance(uuid, str) or SEP not in uuid:
        return  # not one of ours (run_uuid tags every uuid large_image sees): runs whole
    page, _, seq = uuid.rpartition(SEP)
    try:
        number = int(seq)
    except ValueError:
        return
    with _lock:
        held = _newest.get(page)
        if held is not None and held[0] >= number:
            return  # sent before (or is) one that already started: it must not cancel it
        older = held[1]() if held is not None else None
        if older is not None:
            older.cancel = True
        _newest[page] = (number, weakref.ref(record))
        _newest.move_to_end(page)
        while len(_newest) > KEEP:
            _newest.popitem(last=False)


def install() -> bool:
    """Make large_image start its plot requests through ``claim``. If its code is not the
    one this was written for (large_image 1.35), leave it alone: every request then runs whole
    (``run_uuid`` drops every ``uuid``), slower but never cut short."""
    global _installed
    try:
        from girder_large_image_annotation import utils
        calls = utils.PlottableItemData.__init__.__code__.co_names
    except (ImportError, AttributeError):
        calls = ()
    if "_cancelPlottableItemData" not in calls:
        logger.warning("Nucleus Analysis: large_image's PlottableItemData is not the known "
                       "one; Metadata Plot requests will not cancel each other")
        _installed = False
        return False
    utils._cancelPlottableItemData = claim
    _installed = True
    return True
