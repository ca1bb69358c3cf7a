"""How tenant ids and tags are compared: without case or surrounding space.

One definition for ingest (schemas/events.py), the governance config and the router, so
`"Compliance "` pins exactly like `compliance` and `ShopCo` is tenant `shopco` everywhere.
Python's `str.strip` is the rule (it also strips the C0 separators U+001C-U+001F, which
pydantic's `strip_whitespace` keeps).
"""

from __future__ import annotations


def normalize_tenant_id(tenant_id: str) -> str:
    """Tenant ids are matched without case or surrounding space: `ShopCo ` is `shopco`."""
    return tenant_id.strip().casefold()


def normalize_tag(tag: str) -> str:
    """Event tags and `routing.tag_pins` keys are compared without case or surrounding
    space: `"Compliance "` pins like `compliance`."""
    return tag.strip().casefold()
