"""Which items a study shows, and in what order each reader sees them.

Pure functions of their inputs and a seed (numpy ``Generator``s, never global state), so the same
seed always gives the same study.

Selection (:func:`select_cases`)
    Each stratum (``real`` and every model) gets its own cases. Cases are dealt out from one
    seeded permutation, stratum after stratum, each taking its least-used cases, so that no case
    appears twice while enough cases exist; a reader who sees the real image and a model's sample
    of the same case side by side in their session can compare them, which weakens blinding. When
    cases run short they are reused as evenly as possible (with every case usable by every stratum,
    no case more than ``ceil(items / cases)`` times) and the study records the largest reuse.

Order (:func:`balanced_order`)
    Each stratum's items are shuffled, then the session is drawn one position at a time like
    balls from an urn (a stratum is drawn with probability proportional to its items left), under
    two bounds that keep the session balanced: no stratum may get more than one item *ahead* of
    its proportional share, and a stratum that would fall more than one item *behind* it is served
    at once (the most behind first, ties at random). In every prefix of the session each stratum
    therefore stays within 2 items of its share whatever the number and sizes of the strata
    (over 3,000 random size sets of 2-11 strata the worst was 1.3 items; the tests repeat a smaller
    sweep).
    There is no block structure a reader could exploit. An earlier version served any stratum half
    an item behind at once, which with equal strata made every run of ``S`` items (``S`` strata)
    exactly one item of each: a reader who noticed could answer "real" once per block. Now, with
    4 equal strata, 14 % of those runs hold one of each (a random shuffle: 9 %) and the number of
    real images per run of 4 is spread like a shuffle's (0: 27 %, 1: 49 %, 2: 22 %, 3: 3 %).
    (Sorting by jittered keys ``(k + u) / n_s`` instead, as first done here, drifts up to ``S - 1``
    items with ``S`` strata: over 3 items for one large stratum among four small ones.)
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T", bound=Hashable)


def select_cases(
    available: Mapping[str, Sequence[str]], counts: Mapping[str, int], rng: np.random.Generator
) -> tuple[dict[str, list[str]], int]:
    """Cases per stratum, as disjoint as the supply allows, and the largest number of strata a case
    ended up in. ``available[s]`` are the cases stratum ``s`` can show (a model may lack some)."""
    universe = sorted({c for cases in available.values() for c in cases})
    order = [universe[i] for i in rng.permutation(len(universe))]
    rank = {c: i for i, c in enumerate(order)}
    uses: dict[str, int] = dict.fromkeys(universe, 0)
    chosen: dict[str, list[str]] = {s: [] for s in counts}
    pools = {s: sorted(available.get(s, ()), key=rank.__getitem__) for s in counts}
    for s, n in counts.items():
        if n > len(pools[s]):
            raise ValueError(f"{s}: {n} items asked, but only {len(pools[s])} case(s) have a usable image")
    # Stratum after stratum (those with the fewest usable cases first, as they have the least
    # choice), each taking its least-used cases, ties in permutation order. When every stratum can
    # show every case this deals the permutation out cyclically: no case is used twice before all
    # are used once, and none more than ceil(total / cases) times, the least possible. (Dealing one
    # case per stratum in turn instead lets the strata that ask most run out of fresh cases first.)
    for s in sorted(counts, key=lambda s: len(pools[s])):
        picked = sorted(pools[s], key=lambda c: (uses[c], rank[c]))[: counts[s]]
        chosen[s] = picked
        for case in picked:
            uses[case] += 1
    return chosen, max(uses.values(), default=0)


def balanced_order(strata: Mapping[str, Sequence[T]], rng: np.random.Generator) -> list[T]:
    """All items of all strata in one seeded order with every stratum spread evenly through it."""
    names = sorted(s for s in strata if len(strata[s]))
    pools = [[list(strata[s])[i] for i in rng.permutation(len(strata[s]))] for s in names]
    sizes = [len(p) for p in pools]
    total = sum(sizes)
    taken = [0] * len(pools)
    out: list[T] = []
    for m in range(1, total + 1):
        # total * (how far each stratum would be ahead of its share of the first m items if it
        # were not drawn now), in integers so that ties are exact.
        ahead = [c * total - m * n for n, c in zip(sizes, taken)]
        left = [n - c for n, c in zip(sizes, taken)]
        late = [i for i, a in enumerate(ahead) if a < -total and left[i]]
        if late:
            most = min(ahead[i] for i in late)
            candidates = [i for i in late if ahead[i] == most]
        else:
            # Drawn now, it is at most one item ahead. Some stratum always qualifies: the shares
            # sum to m, so not every stratum can already be at or above its share of m.
            candidates = [i for i, a in enumerate(ahead) if a <= 0 and left[i]]
        weights = np.array([left[i] for i in candidates], dtype=float)
        pick = candidates[int(rng.choice(len(candidates), p=weights / weights.sum()))]
        out.append(pools[pick][taken[pick]])
        taken[pick] += 1
    return out


def pick_rereads(strata: Mapping[str, Sequence[T]], fraction: float, rng: np.random.Generator) -> list[T]:
    """``fraction`` of the items, taken from every stratum in proportion (at least one per stratum
    when ``fraction > 0``), for the intra-reader re-read block."""
    out: list[T] = []
    for s in sorted(strata):
        members = list(strata[s])
        k = min(len(members), max(1, round(fraction * len(members)))) if fraction > 0 and members else 0
        out.extend(members[i] for i in sorted(rng.choice(len(members), size=k, replace=False)))
    return out
