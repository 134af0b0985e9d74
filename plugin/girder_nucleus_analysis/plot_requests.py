"""Metadata Plot's requests: which one may cancel which.

HistomicsUI's Metadata Plot sends ``POST annotation/item/<id>/plot/list`` (the columns) and
``plot/data`` (the points) with one ``uuid`` per page. large_image cancels the running request
of a ``uuid`` when another with that ``uuid`` *arrives*, and the cancelled one still answers
200 with what it had found so far (on the CMU slide: 49 of 66 columns, none of the feature
table's). The page aborts its previous request before it sends the next, but on a busy server
the aborted one can arrive last: it then cut the live one short, and the dialog never offered
area, circularity... until a reload.

The plugin's client numbers these requests in the order the page sends them (``seq``, per
route; ``client/plotRequests.js``). Here, before large_image sees a request:

* the newest request of its page and route keeps a ``uuid`` (made the user's and the route's
  own, so that a plot/data never cancels a plot/list, nor one user another's): it cancels the
  older one still running, which the page has given up, as large_image intends;
* a request that arrives after a newer one of its page, or one without ``seq`` (another
  client), loses its ``uuid``: it cancels nothing and answers whole.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

#: pages remembered (uuid x route x user); the oldest are forgotten first
KEEP = 10_000
#: largest ``seq`` taken as a number (JavaScript's exact integers)
MAX_SEQ = 2 ** 53

_newest: OrderedDict[tuple[str, str, str], int] = OrderedDict()
_lock = threading.Lock()


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
    if not isinstance(uuid, str) or not uuid or not isinstance(seq, str):
        return None
    try:
        number = int(seq)
    except ValueError:
        return None
    if not 0 < number <= MAX_SEQ:
        return None
    key = (uuid, route, str(user_id))
    with _lock:
        if number <= _newest.get(key, 0):
            return None  # sent before one that already arrived: it must not cancel that one
        _newest[key] = number
        _newest.move_to_end(key)
        while len(_newest) > KEEP:
            _newest.popitem(last=False)
    return f"{user_id}:{route}:{uuid}"
