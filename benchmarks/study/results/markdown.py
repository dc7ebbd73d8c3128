"""The text of report.md: banners, per-strategy summaries, per-run tables with the trivial
baselines beside them, paired tests, cost, best run and figure links."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.study.results.baselines import BASELINE_METRICS, BASELINE_NAMES, describe
from benchmarks.study.results.cache_section import feature_cache_section
from benchmarks.study.results.figures import best_run, run_name
from benchmarks.study.results.markdown_cells import number, percent, table
from benchmarks.study.results.stats import METRICS

SYNTHETIC_BANNER = (
    "> **SYNTHETIC DATA — NOT CLINICAL RESULTS.** These numbers come from a generated phantom "
    "and only show that the pipeline runs; they say nothing about diagnostic performance."
)
SETUP_KEYS = (
    "data", "framework", "preset", "backbones", "strategies", "seeds", "image_size", "epochs",
    "weights", "command",
)  # fmt: skip
METRIC_TITLES = {"accuracy": "ACC", "balanced_accuracy": "Bal. ACC", "macro_f1": "Macro-F1"}


def incomplete_banner(meta: dict[str, Any]) -> list[str]:
    """The banner of a study that did not finish, or nothing."""
    if not meta.get("incomplete"):
        return []
    return [
        f"> **INCOMPLETE STUDY — {meta['incomplete']}.** Only the runs listed below finished; "
        "the statistics cover them alone.",
        "",
    ]


def sanity_banner(runs: list[dict[str, Any]]) -> list[str]:
    """A loud warning listing every run at or below chance or a trivial predictor."""
    flagged = [run for run in runs if run.get("sanity")]
    if not flagged:
        return []
    lines = [
        f"> **WARNING: {len(flagged)} of {len(runs)} runs are at or below chance or a trivial "
        "predictor on some metric** (see the per-run tables):",
        ">",
    ]
    for run in flagged:
        lines.append(f"> - {run_name(run)}: " + "; ".join(describe(f) for f in run["sanity"]))
    return [*lines, ""]


def setup_section(runs: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    lines = ["## Setup", ""]
    lines += [f"- **{key}**: {meta[key]}" for key in SETUP_KEYS if key in meta]
    lines.append(f"- **runs**: {len(runs)} (seeds {sorted({run['seed'] for run in runs})})")
    config = meta.get("config") or {}
    lines += [f"- **{name}**: {value}" for name, value in config.items() if value is not None]
    lines += [f"- **{name}**: {value}" for name, value in (meta.get("environment") or {}).items()]
    if meta.get("split_notes"):
        lines += ["", "### Data split", ""] + [f"- {note}" for note in meta["split_notes"]]
    return [*lines, ""]


def determinism_section(meta: dict[str, Any]) -> list[str]:
    """What is and is not repeatable about these numbers."""
    statement = meta.get("determinism")
    if not statement:
        return []
    settings = ", ".join(f"{key} {value}" for key, value in statement["framework"].items())
    lines = ["## Determinism", "", "The same command on the same machine gives the same numbers."]
    lines += ["", "Deterministic:", ""] + [f"- {item}" for item in statement["deterministic"]]
    lines += ["", "Not deterministic:", ""]
    lines += [f"- {item}" for item in statement["not_deterministic"]]
    return [*lines, "", f"Framework settings: {settings}.", ""]


def sweep_section(meta: dict[str, Any]) -> list[str]:
    """The sweep's trials per strategy and what each strategy then ran with."""
    sweep = meta.get("sweep")
    if not sweep:
        return []
    grid = "; ".join(f"{name} ∈ {values}" for name, values in sweep["grid"].items())
    rows = []
    for result in sweep["results"]:
        for trial in result["trials"]:
            chosen = trial["setting"] == result["chosen"]
            setting = ", ".join(f"{name} = {value:g}" for name, value in trial["setting"].items())
            rows.append(
                [
                    result["backbone"], result["strategy"], setting or "–",
                    number(trial["val_loss"], "{:.4f}"), percent(trial["val_balanced_accuracy"]),
                    f"{trial['epochs']} ({trial['best_epoch']})", f"{trial['wall_s']:.1f}",
                    "**chosen**" if chosen else "",
                ]
            )  # fmt: skip
    header = "Backbone|Strategy|Setting|Val. loss|Val. bal. ACC (%)|Epochs (best)|Wall (s)|Chosen"
    return [
        "## Sweep on the validation split",
        "",
        f"Grid: {grid}. Each strategy was trained once per setting on the split of seed "
        f"{sweep['results'][0]['seed'] if sweep['results'] else '–'}; the setting whose final "
        "model had the lowest validation loss was used for every seed. The test split was not "
        "used.",
        "",
        *table(header, rows),
        "",
    ]


def summary_cell(summary: dict[str, Any] | None) -> str:
    """``mean [low, high]`` in percent (the mean alone for one seed, ``–`` for none)."""
    if summary is None:
        return "–"
    if summary["n"] < 2:
        return percent(summary["mean"])
    return (
        f"{percent(summary['mean'])} [{percent(summary['ci95_low'])}, "
        f"{percent(summary['ci95_high'])}]"
    )


def summary_section(runs: list[dict[str, Any]], statistics: dict[str, Any]) -> list[str]:
    """Per backbone and strategy: mean and 95 % CI over seeds, epochs, wall time, flags."""
    members: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        members[(run.get("framework", ""), run["backbone"], run["strategy"])].append(run)
    rows = []
    for row in statistics["seeds"]:
        group = members[(row["framework"], row["backbone"], row["strategy"])]
        wall = sum(float(run["wall_s"]) for run in group) / len(group)
        flagged = sum(1 for run in group if run.get("sanity"))
        rows.append(
            [
                row["backbone"],
                row["strategy"],
                len(group),
                *(summary_cell(row.get(metric)) for metric in METRICS),
                f"{sum(run['epochs'] for run in group) / len(group):.1f}",
                f"{wall:.1f}",
                f"**{flagged}**" if flagged else 0,
            ]
        )
    header = (
        "Backbone|Strategy|Seeds|"
        + "|".join(f"{METRIC_TITLES[m]} (%)" for m in METRICS)
        + "|Epochs|Wall time (s)|Flagged runs"
    )
    return [
        "## Results per strategy (test split; mean [95 % CI] over seeds, t distribution)",
        "",
        *table(header, rows),
        "",
        "Wall time: training of one run (model build, every epoch with its validation pass), "
        "mean over seeds. A flagged run is at or below chance or a trivial predictor.",
        "",
    ]


def per_run_section(runs: list[dict[str, Any]]) -> list[str]:
    """One table per seed: every run, then the trivial predictors on the same test split."""
    lines = ["## Per run, with the trivial baselines on the same test split", ""]
    by_seed: dict[int, list[dict]] = defaultdict(list)
    for run in runs:
        by_seed[run["seed"]].append(run)
    for seed, group in sorted(by_seed.items()):
        names = list(group[0].get("class_names") or [])
        header = (
            "Run|"
            + "|".join(f"{METRIC_TITLES[m]} (%)" for m in BASELINE_METRICS)
            + "".join(f"|Recall {name} (%)" for name in names)
            + "|Epochs (best)|Unfreezes|Sanity"
        )
        rows = [_run_row(run, names) for run in group]
        baselines = group[0].get("baselines")
        if baselines:
            rows += [_baseline_row(key, baselines, names) for key in BASELINE_NAMES]
            rows.append(
                [f"*chance (1/{len(names)})*", percent(baselines["chance"]),
                 percent(baselines["chance"]), "–", *("–" for _ in names), "–", "–", ""]
            )  # fmt: skip
        support = _support(group[0])
        lines += [f"### Seed {seed}" + (f" (test split: {support})" if support else ""), ""]
        lines += [*table(header, rows), ""]
    return lines


def _support(run: dict[str, Any]) -> str:
    per_class = run.get("per_class") or {}
    return ", ".join(f"{name} {scores['support']}" for name, scores in per_class.items())


def _rates(run: dict[str, Any]) -> str:
    """`` (lr 0.001, unfrozen × 0.1)``: the rates a run trained with (the ratio when it has one)."""
    ratio = run.get("unfrozen_lr_ratio")
    unfrozen = f", unfrozen × {ratio:g}" if ratio is not None else ""
    return f" (lr {run['lr']:g}{unfrozen})" if "lr" in run else ""


def _run_row(run: dict[str, Any], names: list[str]) -> list[Any]:
    per_class = run.get("per_class") or {}
    recalls = [percent(per_class.get(name, {}).get("recall")) for name in names]
    flags = run.get("sanity") or []
    sanity = "**" + "; ".join(describe(flag) for flag in flags) + "**" if flags else "ok"
    best = run.get("best_epoch")
    epochs = f"{run['epochs']} ({best})" if best is not None else str(run["epochs"])
    return [
        f"{run['backbone']} {run['strategy']}{_rates(run)}",
        *(percent(run.get(metric)) for metric in BASELINE_METRICS),
        *recalls,
        epochs,
        len(run.get("unfreeze_events") or []),
        sanity,
    ]


def _baseline_row(key: str, baselines: dict[str, Any], names: list[str]) -> list[Any]:
    scores = baselines[key]
    return [
        f"*{BASELINE_NAMES[key]}* ({scores['answers']})",
        *(percent(scores[metric]) for metric in BASELINE_METRICS),
        *(percent(scores["recall"].get(name)) for name in names),
        "–",
        "–",
        "",
    ]


def paired_section(statistics: dict[str, Any]) -> list[str]:
    """Paired tests of dynamic against each other strategy."""
    lines = ["## Paired tests: dynamic − each other strategy", ""]
    if not statistics["paired"]:
        return [*lines, "No dynamic runs, or no other strategy: nothing to compare.", ""]
    rows = [
        [
            other, METRIC_TITLES[metric], result["unit"], result["n"],
            number(100 * result["mean"], "{:+.2f}"),
            f"[{number(100 * result['ci95_low'], '{:+.2f}')}, "
            f"{number(100 * result['ci95_high'], '{:+.2f}')}]",
            number(result["t"], "{:.3f}"), result["df"], number(result["p_t"], "{:.4f}"),
            number(result["wilcoxon_w"], "{:.1f}"), number(result["p_wilcoxon"], "{:.4f}"),
            result["note"],
        ]
        for other, results in statistics["paired"].items()
        for metric, result in results.items()
    ]  # fmt: skip
    header = "Dynamic vs|Metric|Pair|n|Mean (pp)|95 % CI (pp)|t|df|p (t-test)|W|p (Wilcoxon)|Note"
    return [
        *lines,
        *table(header, rows),
        "",
        "Paired t-test: `scipy.stats.ttest_rel`; Wilcoxon signed-rank: `scipy.stats.wilcoxon` "
        "(both two-sided). With few pairs the tests have little power; read them with the "
        "per-run tables.",
        "",
    ]


def cost_section(runs: list[dict[str, Any]]) -> list[str]:
    """Depth, epochs, load time and size per backbone and strategy (the Tables 3-4 layout)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs:
        groups[(run["backbone"], run["strategy"])].append(run)
    rows = []
    for (backbone, strategy), members in groups.items():
        first = members[0]
        depth = (
            f"top {first['top_n']}"
            if first.get("top_n") is not None
            else f"L = {first['num_groups']}"
            if first.get("num_groups") is not None
            else "–"
        )
        count = len(members)
        rows.append(
            [
                backbone,
                strategy,
                percent(sum(run["accuracy"] for run in members) / count),
                percent(sum(run["macro_f1"] for run in members) / count),
                depth,
                f"{sum(len(run.get('unfreeze_events') or []) for run in members) / count:.1f}",
                f"{sum(run['load_s'] for run in members) / count:.3f}",
                f"{sum(run['size_mb'] for run in members) / count:.2f}",
                first["weights"],
            ]
        )
    header = "Backbone|Strategy|ACC (%)|F1 (%)|Depth|Unfreezes|Load time (s)|Size (MB)|Weights"
    return [
        "## Depth, load time and size (Tables 3–4 layout, means over seeds)",
        "",
        *table(header, rows),
        "",
    ]


def best_run_section(runs: list[dict[str, Any]]) -> list[str]:
    best = best_run(runs)
    lines = [
        "## Best run (by balanced accuracy)",
        "",
        f"{run_name(best)}: accuracy {percent(best['accuracy'], 2)} %, balanced accuracy "
        f"{percent(best['balanced_accuracy'], 2)} %, macro-F1 {percent(best['macro_f1'], 2)} %.",
        "",
    ]
    if best.get("per_class"):
        rows = [
            [name, *(f"{scores[key]:.3f}" for key in ("precision", "recall", "f1")),
             scores["support"]]
            for name, scores in best["per_class"].items()
        ]  # fmt: skip
        lines += [*table("Class|Precision|Recall|F1|Support", rows), ""]
    return lines


def figures_section(figures: dict[str, Any], out_dir: Path) -> list[str]:
    captions = {
        "accuracy": "Accuracy per backbone (Fig. 3)",
        "macro_f1": "Macro-F1 per backbone (Fig. 4)",
        "confusion": "Normalised confusion matrix of the best run (Fig. 5)",
    }
    lines = ["## Figures", ""]
    for key, title in captions.items():
        if figures[key] is not None:
            lines += [f"![{title}]({figures[key].relative_to(out_dir).as_posix()})", ""]
    if figures["timelines"]:
        lines += ["### Training timelines (validation loss, learning rate, unfreeze events)", ""]
        for run, path in figures["timelines"]:
            lines.append(f"- [{run_name(run)}]({path.relative_to(out_dir).as_posix()})")
    return lines


def render(
    runs: list[dict[str, Any]],
    meta: dict[str, Any],
    statistics: dict[str, Any],
    figures: dict[str, Any],
    out_dir: Path,
) -> str:
    """The whole report.md."""
    synthetic = bool(meta.get("synthetic")) or any(run.get("synthetic") for run in runs)
    banner = [SYNTHETIC_BANNER, ""] if synthetic else []
    strategies = ", ".join(dict.fromkeys(run["strategy"] for run in runs))
    lines = [f"# Fine-tuning study: {strategies}", "", *incomplete_banner(meta), *banner]
    lines += sanity_banner(runs)
    lines += setup_section(runs, meta)
    lines += sweep_section(meta)
    lines += summary_section(runs, statistics)
    lines += per_run_section(runs)
    lines += paired_section(statistics)
    lines += cost_section(runs)
    lines += feature_cache_section(runs)
    lines += best_run_section(runs)
    lines += determinism_section(meta)
    lines += figures_section(figures, out_dir)
    lines += ["", *incomplete_banner(meta), *banner]
    return "\n".join(lines).rstrip() + "\n"
