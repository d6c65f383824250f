"""Scores as Markdown: the tables the notebooks print and the benchmarks record."""

from __future__ import annotations

__all__ = ["scores_table"]


def scores_table(
    scores: dict[str, dict[str, float]], tolerances: list[float], threshold: float
) -> str:
    """One row per method: pointing game at each tolerance, energy in the box, mask IoU."""
    if len(tolerances) == 1:
        t = tolerances[0]
        heads, keys = [f"pointing game{f', ±{t:g} px' if t else ''}"], ["pointing_game"]
    else:
        heads = [f"pointing game ±{t:g} px" for t in tolerances]
        keys = [f"pointing_game_{t:g}px" for t in tolerances]
    lines = [
        f"| method | n | {' | '.join(heads)} | energy in box | mask IoU (>= {threshold:g}, "
        "per-map) |",
        "|---|---:|" + "---:|" * len(heads) + "---:|---:|",
    ]
    for name, s in scores.items():
        cells = " | ".join(f"{s[k]:.3f}" for k in keys)
        lines.append(f"| {name} | {s['n']} | {cells} | {s['energy']:.3f} | {s['mask_iou']:.3f} |")
    return "\n".join(lines)
