"""Names of the objects made for a Protégé resource: deterministic, and always valid where they go (pure).

KubeRay refuses a RayJob or RayService whose name is over 47 characters (it appends 6 to
name the RayCluster, whose limit is 53) or not a DNS-1035 label, and reports it only in the
object's status (``ValidationFailed``); a Service's name is a DNS-1035 label of at most 63.
So a child is ``<owner>-<suffix>`` when that fits, and otherwise the owner's name is cut and
an 8-hex hash of the whole of it keeps two long names with a common prefix apart. Every
caller asks here; nothing parses a name back.
"""

from __future__ import annotations

import hashlib
import re

KUBERAY_NAME_MAX = 47  # KubeRay's MaxRayJobNameLength and MaxRayServiceNameLength
DNS_LABEL_MAX = 63  # a Service's name, a label's value
DNS_1035_PATTERN = "[a-z]([-a-z0-9]*[a-z0-9])?"  # RE2 and Python alike (the CRD's CEL rule uses it too)
_DNS_1035 = re.compile(DNS_1035_PATTERN)


def is_dns_1035_label(name: str, limit: int = DNS_LABEL_MAX) -> bool:
    return len(name) <= limit and _DNS_1035.fullmatch(name) is not None


def as_dns_1035_label(text: str, limit: int = DNS_LABEL_MAX) -> str:
    """``text`` made a DNS-1035 label: lower case, other characters as '-', starting with a letter,
    cut to ``limit``; empty when nothing is left."""
    label = re.sub(r"[^a-z0-9]+", "-", text.lower()).lstrip("-0123456789")
    return label[:limit].rstrip("-")


NAME_RULE = (
    "metadata.name must be a DNS-1035 label of at most 63 characters (lowercase letters, digits and '-', "
    "starting with a letter, ending with a letter or digit): the names of its Ray jobs and services, "
    "and its labels, are made from it"
)


def child_name(owner: str, suffix: str, limit: int = DNS_LABEL_MAX) -> str:
    """``<owner>-<suffix>``, or, when that is too long or not a DNS-1035 label, the owner's name cut
    to fit with a hash of the whole of it: ``<owner cut>-<8 hex>-<suffix>``."""
    plain = f"{owner}-{suffix}"
    if is_dns_1035_label(plain, limit):
        return plain
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    room = limit - len(suffix) - len(digest) - 2
    if room < 0:
        raise ValueError(f"the suffix {suffix!r} leaves no room for a name of at most {limit} characters")
    head = as_dns_1035_label(owner, room)
    return f"{head}-{digest}-{suffix}" if head else f"p{digest[1:]}-{suffix}"
