"""`dclip study --config demo.yaml --seeds 0 1 2`: repeat an experiment over seeds and report paired differences.

Every seed runs the whole pipeline in `<output_dir>/seed-<n>` with the experiment's top-level `seed` set to `n` (it
seeds the teacher, the students, their batch order and caption draws). The data set and the bootstrapped base are
shared through one cache folder, so the seeds differ only in what DCLIP trains. For each metric the study reports,
per comparison (DCLIP − plain fine-tune, DCLIP − region-free control, DCLIP − base), the per-seed differences, their
mean and standard deviation, and on how many seeds DCLIP was ahead. A gain counts only when DCLIP beats both controls
on every seed (DEMO_NOTES.md: "Controls that make the demo honest").
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .pipeline import Pipeline, apply_smoke, load_experiment
from .stages import write_json_atomic

logger = logging.getLogger(__name__)

COMPARISONS = (("dclip", "plain_finetune"), ("dclip", "region_free"), ("dclip", "base"))


def _numeric_metrics(per_dataset: Mapping[str, Any]) -> dict[str, float]:
    flat: dict[str, float] = {}
    for dataset, metrics in per_dataset.items():
        if not isinstance(metrics, Mapping):
            continue
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[f"{dataset}/{key}"] = float(value)
            elif isinstance(value, Mapping):  # one level of nesting, e.g. hard-negative accuracy per swap type
                for sub, sub_value in value.items():
                    if isinstance(sub_value, (int, float)) and not isinstance(sub_value, bool):
                        flat[f"{dataset}/{key}/{sub}"] = float(sub_value)
    return flat


def paired_differences(per_seed: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """`{"dclip-plain_finetune": {metric: {"diffs": [...], "mean", "std", "wins", "seeds"}}}` over the seeds.

    Args:
        per_seed: `{seed: results.json["models"]}`.
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, reference in COMPARISONS:
        table: dict[str, dict[str, Any]] = {}
        for seed, models in sorted(per_seed.items()):
            if model not in models or reference not in models:
                continue
            ours, theirs = _numeric_metrics(models[model]), _numeric_metrics(models[reference])
            for metric in sorted(set(ours) & set(theirs)):
                table.setdefault(metric, {"diffs": [], "seeds": []})
                table[metric]["diffs"].append(ours[metric] - theirs[metric])
                table[metric]["seeds"].append(seed)
        for stats in table.values():
            diffs = stats["diffs"]
            stats["mean"] = statistics.fmean(diffs)
            stats["std"] = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            stats["wins"] = sum(d > 0 for d in diffs)
        if table:
            out[f"{model}-{reference}"] = table
    return out


HEADLINE = ("t2i_recall@1", "i2t_recall@1", "t2i_mrr", "i2t_mrr", "hard_negatives")


def study_table(differences: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Markdown: one row per (comparison, headline metric) with per-seed differences, mean ± std and wins."""
    lines = [
        "| comparison | metric | per-seed differences (points) | mean ± std | DCLIP ahead |",
        "|---|---|---|---|---|",
    ]
    for comparison, table in differences.items():
        for metric, stats in table.items():
            if not any(key in metric for key in HEADLINE) or metric.endswith(("_count", "/n")):
                continue
            diffs = ", ".join(f"{d:+.2f}" for d in stats["diffs"])
            lines.append(
                f"| {comparison} | {metric} | {diffs} | {stats['mean']:+.2f} ± {stats['std']:.2f} | "
                f"{stats['wins']}/{len(stats['diffs'])} |"
            )
    return "\n".join(lines)


def run_study(
    experiment: dict[str, Any], seeds: Sequence[int], output_dir: str | Path, *, progress: bool = True
) -> dict[str, Any]:
    """Run the experiment once per seed (sharing data and base through one cache) and write the paired differences."""
    output_dir = Path(output_dir)
    per_seed: dict[int, Any] = {}
    for seed in seeds:
        logger.info("Study: seed %d of %s", seed, list(seeds))
        run = Pipeline(
            {**experiment, "seed": int(seed)},
            output_dir / f"seed-{seed}",
            cache_dir=output_dir / "cache",
            progress=progress,
        ).run()
        results = json.loads(Path(run["outputs"]["evaluate"]["results_json"]).read_text(encoding="utf-8"))
        per_seed[int(seed)] = results["models"]
    differences = paired_differences(per_seed)
    study = {"seeds": list(seeds), "models": per_seed, "paired_differences": differences}
    write_json_atomic(output_dir / "study.json", study)
    table = study_table(differences)
    (output_dir / "study.md").write_text(table + "\n", encoding="utf-8")
    return {**study, "table": table}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dclip study", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="experiment YAML (e.g. the demo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (3+ recommended)")
    parser.add_argument("--output_dir", default="runs/study")
    parser.add_argument("--smoke", action="store_true", help="apply the experiment's `smoke:` sizes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    experiment = load_experiment(args.config)
    if args.smoke:
        experiment = apply_smoke(experiment)
    study = run_study(experiment, args.seeds, args.output_dir, progress=not args.quiet)
    print("\n" + study["table"])
    print(f"\nWrote {Path(args.output_dir) / 'study.json'} and {Path(args.output_dir) / 'study.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
