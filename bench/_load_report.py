"""The tables of bench/load.py's mixed and paced phases: each endpoint in the mix against the same
endpoint alone. A file starting with "_" is not run by bench/run_all.py.
"""

from __future__ import annotations

import numpy as np
from _wrk import Row


def fairness(alone: dict[str, Row], mixed: list[Row]) -> list[str]:
    """Each endpoint's p99 in the mix against its p99 alone at the same connections, with its
    share of its alone throughput kept in the mix."""
    pairs = [(alone[r.endpoint], r) for r in mixed if r.endpoint in alone]
    if not pairs:
        return []
    lines = [
        "Each endpoint in the mix against the same endpoint alone (same connections; target: "
        "p99 in the mix at most 3x its p99 alone):",
        "",
        "| endpoint | p99 alone (ms) | p99 in the mix (ms) | ratio | within 3x | req/s in the mix / alone |",
        "|---|---:|---:|---:|---|---:|",
    ]
    shares = []
    for a, m in pairs:
        ratio = m.p99_ms / a.p99_ms if a.p99_ms else float("inf")
        share = m.rps / a.rps if a.rps else float("nan")
        shares.append(share)
        lines.append(
            f"| {m.endpoint} | {a.p99_ms:.1f} | {m.p99_ms:.1f} | {ratio:.1f}x | {'yes' if ratio <= 3 else 'no'} "
            f"| {share:.2f} |"
        )
    total = float(np.nansum(shares))
    lines += [
        "",
        f"The shares sum to {total:.2f}. Every connection here sends its next request when its "
        "answer comes (a closed loop), so by Little's law an endpoint's mean latency is its "
        "connections over its throughput, and its mean latency in the mix is 1 / share times "
        "its mean alone. When each endpoint alone already keeps the server busy, the shares "
        f"can sum to at most about 1, so some endpoint of the {len(pairs)} keeps at most "
        f"1/{len(pairs)} of its throughput and waits at least {len(pairs)}x longer on average, "
        "whatever the scheduler does: at saturation, 3x for every endpoint cannot be met. The "
        "paced phase below asks the question that remains: at a load the server can carry, do "
        "the expensive endpoints make the cheap ones wait?",
    ]
    return [*lines, ""]


def paced(
    alone: dict[str, Row], mixed: list[Row], load: float, closed: dict[str, Row] | None = None, capacity: float = 0.0
) -> list[str]:
    """Each endpoint's p99 in the paced mix against its p99 paced alone (same pacing); `closed`:
    each endpoint alone with closed-loop clients (the rates the pacing is a share of)."""
    pairs = [(alone[r.endpoint], r) for r in mixed if r.endpoint in alone]
    if not pairs:
        return []
    lines = [
        f"Paced: each connection waits between requests so that each endpoint asks for "
        f"{load / len(pairs):.3g} of the server's CPU under the saturated mix ({capacity:.2f} cores, the "
        f"most it used here), from its CPU per request measured paced alone: the four together {load:.0%} "
        "of what the server can do here. Each endpoint paced alone, then the four paced together "
        "(target: p99 in the mix at most 3x its p99 alone):",
        "",
        "| endpoint | connections | think time (ms) | req/s alone / in the mix | p99 paced alone (ms) "
        "| p99 in the paced mix (ms) | ratio | within 3x |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for a, m in pairs:
        ratio = m.p99_ms / a.p99_ms if a.p99_ms else float("inf")
        lines.append(
            f"| {m.endpoint} | {a.connections} | {a.think_ms:.0f} | {a.rps:.1f} / {m.rps:.1f} | {a.p99_ms:.1f} "
            f"| {m.p99_ms:.1f} | {ratio:.1f}x | {'yes' if ratio <= 3 else 'no'} |"
        )
    lines.append("")
    used = [a.server_cpu for a, _ in pairs if a.server_cpu is not None]
    full = [r.server_cpu for r in (closed or {}).values() if r.server_cpu is not None]
    mix_cpu = next((r.server_cpu for r in mixed if r.endpoint == "**all**" and r.server_cpu is not None), None)
    if used:
        lines.append(
            "What the paced load really asks of the server, in its CPU (cores, its CPU time over the wall "
            "time): each endpoint paced alone "
            + ", ".join(f"{a.endpoint} {a.server_cpu:.2f}" for a, _ in pairs if a.server_cpu is not None)
            + f", {sum(used):.2f} together"
            + (f"; the paced mix {mix_cpu:.2f}" if mix_cpu is not None else "")
            + (
                f"; at what a request cost with the closed-loop clients alone (those used "
                f"{', '.join(f'{c:.2f}' for c in full)}), the same requests would use "
                f"{load / len(pairs) * sum(full):.2f} together."
                if len(full) == len(pairs)
                else "."
            )
        )
        lines.append("")
    return lines
