"""Ids of responses and of their items.

An item id carries the id of the response it belongs to (`msg_<response hex><index>`),
so an item a client sends back by id (a reasoning item without its encrypted content,
an `item_reference`) is found with one read of that response's record.
"""

from __future__ import annotations

import os
import re

RESPONSE_PREFIX = "resp_"
_ITEM_ID = re.compile(r"^(?:msg|fc|fco|rs)_([0-9a-f]{48})[0-9a-f]{4}$")
INPUT_BASE = 0x8000  # input items are numbered from here, output items from 0


def new_response_id() -> str:
    return RESPONSE_PREFIX + os.urandom(24).hex()


def item_id(prefix: str, response_id: str, index: int) -> str:
    return f"{prefix}_{response_id[len(RESPONSE_PREFIX):]}{index & 0xFFFF:04x}"


def response_of_item(item: object) -> str | None:
    """The id of the stored response an item id of ours belongs to, or None."""
    if not isinstance(item, str):
        return None
    m = _ITEM_ID.match(item)
    return RESPONSE_PREFIX + m.group(1) if m else None
