"""Which type an inference answer takes: the one function that reads the Accept header.

`preferred` honours q-values (RFC 9110 12.5.1): each type the route answers gets the q of the
most specific range that matches it (`text/csv` before `text/*` before `*/*`), q=0 excludes it,
and the highest q wins; ties go to the range named first in the header, then to the route's own
order (JSON first). A missing or empty header, `*/*` and `application/*` get JSON, as do
browsers' usual headers (their `*/*;q=0.8` ranks every type alike). A header that accepts none of
the route's types is a 406 naming them (`refusal`). The CSV middleware (service.http.csv_records)
asks it for every inference POST, the express /logprob handler declines a request whose Accept
does not take JSON (the middleware then answers the 406), and POST /sample asks it for a PNG.
"""

from __future__ import annotations

from collections.abc import Sequence

from made.core.errors import NotAcceptable

JSON, CSV, PNG = "application/json", "text/csv", "image/png"

# What each inference route answers, in its order of preference: to a JSON body, to a CSV body.
_ANSWERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "/logprob": ((JSON,), (JSON, CSV)),
    "/impute": ((JSON, CSV), (JSON, CSV)),
    "/sample": ((JSON, CSV, PNG), (JSON, CSV, PNG)),
    "/conditionals": ((JSON,), (JSON,)),
    "/denoise": ((JSON,), (JSON,)),
}
NEGOTIATED = frozenset(_ANSWERS)  # the POST paths whose answer's type is chosen here


def offers(path: str, csv_body: bool = False) -> tuple[str, ...]:
    """The types POST `path` answers (to a CSV body where csv_body), JSON first."""
    return _ANSWERS[path][csv_body]


def preferred(accept: str | None, offered: Sequence[str]) -> str | None:
    """The type of `offered` the Accept header ranks highest; offered[0] without a header; None
    where it accepts none of them."""
    if not accept or accept == "*/*":
        return offered[0]
    ranges = _ranges(accept)
    if not ranges and not accept.replace(",", "").strip():
        return offered[0]  # a header of nothing but commas and spaces: as none
    best: tuple[float, int, int] | None = None  # (-q, where named, which offer): the smallest wins
    for k, media in enumerate(offered):
        match = _match(media, ranges)
        if match is not None and match[0] > 0 and (best is None or (-match[0], match[1], k) < best):
            best = (-match[0], match[1], k)
    return None if best is None else offered[best[2]]


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """The media ranges of an Accept header as (type, subtype, q), in its order; what is not a
    media range ("json") is left out: it names nothing this server answers."""
    ranges = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        kind, slash, sub = media.lower().partition("/")
        if not slash:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                q = q if 0.0 <= q <= 1.0 else 0.0  # NaN and values outside [0, 1] accept nothing
        ranges.append((kind.strip(), sub.strip(), q))
    return ranges


def _match(media: str, ranges: list[tuple[str, str, float]]) -> tuple[float, int] | None:
    """(q, where named) of the most specific range that matches `media` (the first of equals),
    or None where none does."""
    kind, _, sub = media.partition("/")
    best: tuple[int, float, int] | None = None  # (specificity, q, where named)
    for i, (rk, rs, q) in enumerate(ranges):
        if (rk, rs) == (kind, sub):
            specificity = 2
        elif rk == kind and rs == "*":
            specificity = 1
        elif (rk, rs) == ("*", "*"):
            specificity = 0
        else:
            continue
        if best is None or specificity > best[0]:
            best = (specificity, q, i)
    return None if best is None else (best[1], best[2])


def refusal(path: str, accept: str, csv_body: bool) -> NotAcceptable:
    """The 406 of a request whose Accept header accepts none of the types its route answers."""
    answered = offers(path, csv_body)
    also = ""
    if path == "/logprob" and not csv_body:
        also = f" (and {CSV} to a body sent as {CSV})"
    return NotAcceptable(
        f"POST {path} answers {' or '.join(answered)}{also}; the Accept header {accept!r} accepts none of them "
        "(send 'Accept: application/json', or none)"
    )
