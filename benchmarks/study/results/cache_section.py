"""The report's feature-cache section: per run, how much the frozen-prefix cache served."""

from __future__ import annotations

from typing import Any

from benchmarks.study.results.markdown_cells import percent, table


def feature_cache_section(runs: list[dict[str, Any]]) -> list[str]:
    """Mode, hit rate, largest size, estimated time saved and training wall time of each run;
    nothing for runs recorded before the cache existed."""
    recorded = [run for run in runs if run.get("feature_cache")]
    if not recorded:
        return []
    rows = []
    for run in recorded:
        fallbacks = sorted(
            {
                str(stats["fallback"])
                for stats in (run.get("feature_cache_detail") or {}).values()
                if stats.get("fallback") and stats["fallback"] != "nothing is frozen"
            }
        )
        rows.append(
            [
                run["backbone"],
                run["strategy"],
                run["seed"],
                run["feature_cache"],
                percent(run.get("cache_hit_rate")),
                f"{run.get('cache_size_mb', 0.0):.2f}",
                f"{run.get('cache_saved_s', 0.0):.1f}",
                f"{run['wall_s']:.1f}",
                "; ".join(fallbacks) or "–",
            ]
        )
    header = "Backbone|Strategy|Seed|Cache|Hit rate (%)|Size (MB)|Saved (s, est.)|Wall (s)|Fallback"
    return [
        "## Feature cache",
        "",
        "The frozen part of the backbone, computed once per trainable set and served to the "
        "validation pass (and, on PyTorch, to the training samples that are not augmented). "
        "Hit rate: batches served of all batches that needed the frozen part; size: the "
        "largest the run's caches held; saved: the frozen part's time at build, summed over "
        "the hits, minus the serving time.",
        "",
        *table(header, rows),
        "",
    ]
