"""`dclip run --config <experiment.yaml>`: the whole DCLIP pipeline, resumable stage by stage.

load data → (bootstrap a base CLIP, demo only) → regions → frozen-CLIP feature caches → teacher training → teacher
targets → student distillation (+ the demo's controls) → evaluation of base vs students → model cards and Hub-ready
folders → reload check (student in stock `CLIPModel`, teacher with `trust_remote_code` in a fresh process) → summary.

Each stage is skipped when its recorded output exists and its settings and inputs are unchanged
(`training/stages.py`). The experiment file format is documented in `docs/pipeline.md`; in short:

```yaml
seed: 42                      # shared by both training stages
data:    {synthetic: {...}}   # or {sources: [<data.SourceSpec>, ...], val_fraction: 0.1, exclude_file: ...}
base:    {clip_name_or_path: openai/clip-vit-base-patch16}   # or {bootstrap: {<BootstrapConfig>}}
regions: {source: annotations}                               # yolo | annotations | grid | whole, + settings
teacher: {<ModelArguments / TeacherTrainingArguments>}
student: {<StudentTrainingArguments>}
controls: [plain_finetune, region_free]                      # optional baselines trained like the student
evaluation: {retrieval: [...], zero_shot: [...], hard_negatives: [...]}
hub: {student_repo_id: org/dclip-..., teacher_repo_id: org/dclip-teacher-...}
```
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .stages import StageRunner, fingerprint, write_json_atomic

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
KNOWN_SECTIONS = (
    "data",
    "base",
    "regions",
    "caches",
    "teacher",
    "student",
    "controls",
    "evaluation",
    "hub",
    "smoke",
)
CONTROLS = {
    # name -> student-argument overrides. Same steps, batches, learning rate and seed as the DCLIP student.
    "plain_finetune": {"weight_image": 0.0, "weight_text": 0.0, "weight_contrastive": 1.0},
    "region_free": {},  # the hybrid loss, with the teacher target replaced by frozen CLIP's text embedding
}


# --------------------------------------------------------------------------------------------------------------------
# Experiment file
# --------------------------------------------------------------------------------------------------------------------


def default_shared_data() -> str:
    return os.environ.get("DCLIP_SHARED_DATA") or str(REPO_ROOT.parent / "shared" / "data")


def _expand(value: Any) -> Any:
    """Expand `${DCLIP_SHARED_DATA}` (defaulting to ../shared/data), other env vars and `~` in string values."""
    if isinstance(value, str):
        if "$" in value or value.startswith("~"):
            env = dict(os.environ)
            env.setdefault("DCLIP_SHARED_DATA", default_shared_data())
            expanded = value
            for key, replacement in env.items():
                expanded = expanded.replace("${" + key + "}", replacement)
            unresolved = re.findall(r"\$\{(\w+)\}", expanded)
            if unresolved:
                raise ValueError(
                    f"{value!r} uses the environment variable(s) {unresolved}, which are not set; export them (e.g. "
                    f"`export {unresolved[0]}=/path/to/data`) before running this experiment."
                )
            return os.path.expanduser(expanded)
        return value
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def load_experiment(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check an experiment YAML (unknown sections are an error: a typo must not silently do nothing)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Experiment file {str(path)!r} does not exist; see training/configs/experiments/ for examples."
        )
    with open(path, encoding="utf-8") as handle:
        try:
            experiment = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(experiment, dict):
        raise ValueError(f"{path}: an experiment file must be a mapping of sections, got {type(experiment).__name__}.")
    sections = {key for key, value in experiment.items() if isinstance(value, (dict, list))}
    unknown = sorted(sections - set(KNOWN_SECTIONS))
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}; known sections: {list(KNOWN_SECTIONS)}.")
    for required in ("data", "base"):
        if not isinstance(experiment.get(required), dict):
            raise ValueError(f"{path}: section {required!r} is missing (see docs/pipeline.md).")
    controls = experiment.get("controls") or []
    bad = sorted(set(controls) - set(CONTROLS))
    if bad:
        raise ValueError(f"{path}: unknown control(s) {bad}; choose from {sorted(CONTROLS)}.")
    _check_stage_sections(path, experiment)
    return _expand(experiment)


def _check_stage_sections(path: Path, experiment: Mapping[str, Any]) -> None:
    """Reject unknown teacher/student arguments when the file is read, not after the stages before them ran."""
    from .args import check_stage_section

    for stage in ("teacher", "student"):
        for where, section in (
            (stage, experiment.get(stage)),
            (f"smoke.{stage}", (experiment.get("smoke") or {}).get(stage)),
        ):
            if section is not None:
                check_stage_section(stage, section, where=f"section {where!r} of {str(path)!r}")


def apply_smoke(experiment: dict[str, Any]) -> dict[str, Any]:
    """Merge the experiment's `smoke:` section (tiny sizes for CI) over the other sections.

    Sections merge key by key, except `base`, which the smoke section replaces whole (a smoke run swaps a pretrained
    CLIP for a tiny bootstrapped one).
    """
    merged = json.loads(json.dumps(experiment))
    for section, values in (experiment.get("smoke") or {}).items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict) and section != "base":
            merged[section] = _deep_merge(merged[section], values)
        else:
            merged[section] = values
    merged.pop("smoke", None)
    return merged


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = (
            _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _stage_values(experiment: Mapping[str, Any], stage: str) -> dict[str, Any]:
    shared = {k: v for k, v in experiment.items() if not isinstance(v, (dict, list))}
    return {**shared, **(experiment.get(stage) or {})}


# --------------------------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------------------------


def _save_dataset_atomic(dataset: Any, folder: Path) -> None:
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


class Pipeline:
    """One `dclip run`: the stages of an experiment in a run folder.

    Args:
        experiment: the parsed experiment (see `load_experiment`).
        run_dir: where every output goes (caches under `run_dir/cache` unless `cache_dir` is given).
        cache_dir: a cache folder shared between runs (caches are fingerprinted, so sharing is safe).
        force: stage names to re-run although up to date (`all` for every stage).
        progress: show progress bars.
    """

    def __init__(
        self,
        experiment: dict[str, Any],
        run_dir: str | os.PathLike,
        *,
        cache_dir: str | os.PathLike | None = None,
        force: set[str] | None = None,
        progress: bool = True,
    ) -> None:
        self.experiment = experiment
        self.run_dir = Path(run_dir).resolve()
        self.cache_dir = Path(cache_dir).resolve() if cache_dir else self.run_dir / "cache"
        self.runner = StageRunner(self.run_dir, force=force)
        self.progress = progress
        self.seed = int(experiment.get("seed", 42))
        self.synthetic = None  # SyntheticData of a demo run (test split, hard negatives, zero-shot sets)

    # ----- data and base model -----

    def _synthetic_config(self):
        from .synthetic import SyntheticConfig

        return SyntheticConfig(**(self.experiment["data"].get("synthetic") or {}))

    def stage_data(self) -> dict[str, Any]:
        data = self.experiment["data"]
        if "synthetic" in data and data.get("sources"):
            raise ValueError("Section data: give either `synthetic` or `sources`, not both.")

        def work() -> dict[str, Any]:
            from datasets import concatenate_datasets

            folder = self.run_dir / "data" / "dataset"
            folder.parent.mkdir(parents=True, exist_ok=True)
            if "synthetic" in data:
                splits = self._build_synthetic().splits
                dataset = concatenate_datasets([splits["train"], splits["val"]])
                summary = {"selection": "synthetic", "train": len(splits["train"]), "val": len(splits["val"])}
            else:
                from .data import mix_sources

                if not data.get("sources"):
                    raise ValueError("Section data needs `sources` (a list of source specs) or `synthetic`.")
                exclude_ids = set(data.get("exclude_ids") or [])
                if data.get("exclude_file"):
                    from .data import load_exclusion_ids

                    # The clean selection (METHOD §4): drop the images of these splits of a Karpathy JSON.
                    splits = tuple(data.get("exclude_splits") or ("val", "test"))
                    exclude_ids |= load_exclusion_ids(data["exclude_file"], splits=splits)
                dataset, mix = mix_sources(
                    data["sources"],
                    seed=int(data.get("seed", self.seed)),
                    val_fraction=float(data.get("val_fraction", 0.1)),
                    exclude_ids=sorted(exclude_ids),
                )
                logger.info("%s", mix)
                summary = mix.to_dict()
            _save_dataset_atomic(dataset, folder)
            counts = {split: int(sum(1 for s in dataset["split"] if s == split)) for split in ("train", "val")}
            return {"dataset_dir": str(folder), "counts": counts, "summary": summary}

        return self.runner.run("data", {"data": data, "seed": self.seed}, work, paths=lambda o: [o["dataset_dir"]])

    def _build_synthetic(self):
        from .synthetic import build_synthetic

        if self.synthetic is None:
            self.synthetic = build_synthetic(self.cache_dir / "synthetic", self._synthetic_config())
        return self.synthetic

    def stage_base(self) -> dict[str, Any]:
        base = self.experiment["base"]
        if ("bootstrap" in base) == bool(base.get("clip_name_or_path")):
            raise ValueError("Section base needs exactly one of `clip_name_or_path` or `bootstrap`.")
        upstream: tuple[str, ...] = ("data",) if "bootstrap" in base else ()

        def work() -> dict[str, Any]:
            if "clip_name_or_path" in base:
                _check_model_available(base["clip_name_or_path"])
                return {"clip": base["clip_name_or_path"]}
            from .bootstrap import BootstrapConfig, bootstrap_clip

            # Synthetic runs pre-train on their own `pretrain` split (object close-ups + coarse scenes); other runs
            # (smoke tests without a pretrained CLIP) on their training images.
            if "synthetic" in self.experiment["data"]:
                synthetic = self._build_synthetic()
                rows = synthetic.splits["pretrain"].to_list()
                zero_shot = {name: synthetic.zero_shot(name) for name in synthetic.zero_shot_dirs}
                template, data_key = synthetic.zero_shot_template, self._synthetic_config().fingerprint()
            else:
                rows, zero_shot, template = self._dataset("train").to_list(), {}, "a {}"
                data_key = self.runner.records["data"].fingerprint
            # In the cache, named by its settings: the seeds of a study share one bootstrapped base.
            folder = self.cache_dir / f"base-{fingerprint(base, data_key)}"
            metrics_file = folder / "bootstrap_metrics.json"
            if metrics_file.is_file():
                metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
                logger.info("Reusing the bootstrapped base CLIP in %s.", folder)
                return {
                    "clip": str(folder),
                    "bootstrap": {k: metrics.get(k) for k in ("zero_shot", "seconds", "steps")},
                }
            metrics = bootstrap_clip(
                rows,
                folder,
                BootstrapConfig(**(base.get("bootstrap") or {})),
                zero_shot_sets=zero_shot,
                zero_shot_template=template,
                progress=self.progress,
            )
            return {"clip": str(folder), "bootstrap": {k: metrics[k] for k in ("zero_shot", "seconds", "steps")}}

        paths = (lambda o: [o["clip"]]) if "bootstrap" in base else None
        return self.runner.run("base", {"base": base}, work, paths=paths, upstream=upstream)

    def _dataset(self, split: str | None = None):
        from datasets import load_from_disk

        dataset = load_from_disk(self.runner.records["data"].outputs["dataset_dir"])
        if split is None:
            return dataset
        return dataset.filter(lambda value: value == split, input_columns="split")

    def _clip_path(self) -> str:
        return self.runner.records["base"].outputs["clip"]

    # ----- regions and caches -----

    def _region_source(self):
        from .regions import build_region_source

        regions = dict(self.experiment.get("regions") or {"source": "annotations"})
        source = regions.pop("source", "annotations")
        settings = regions.pop(source, {}) if isinstance(regions.get(source), dict) else {}
        return build_region_source(source, **{**regions, **settings, "run_dir": str(self.run_dir)})

    def stage_regions(self) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            from .regions import default_region_cache_dir, extract_regions

            source = self._region_source()
            folder = default_region_cache_dir(self.cache_dir, source)
            summary = extract_regions(self._dataset(), source, folder, progress=self.progress)
            return {"regions_dir": str(folder), "counts": dict(summary.to_dict().get("counts", {}))}

        return self.runner.run(
            "regions",
            {"regions": self.experiment.get("regions") or {"source": "annotations"}},
            work,
            paths=lambda o: [o["regions_dir"]],
            upstream=("data",),
        )

    def _teacher_architecture(self) -> dict[str, Any]:
        values = self.experiment.get("teacher") or {}
        names = {
            "cross_attention_heads": "num_attention_heads",
            "cross_layers": "num_cross_layers",
            "empty_region_policy": "empty_region_policy",
            "use_padding_masks": "use_padding_masks",
        }
        return {config_name: values[arg] for arg, config_name in names.items() if arg in values}

    def _dclip_processor(self, clip_path: str):
        from transformers import CLIPProcessor

        from modeling_dclip import DCLIPProcessor

        clip_processor = CLIPProcessor.from_pretrained(clip_path)
        return DCLIPProcessor(image_processor=clip_processor.image_processor, tokenizer=clip_processor.tokenizer)

    def stage_features(self) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            from modeling_dclip import DCLIPTeacherModel

            from .features import FeatureCachePaths, compute_image_features, compute_text_features
            from .regions import load_region_cache

            clip_path = self._clip_path()
            teacher = DCLIPTeacherModel.from_clip(clip_path, **self._teacher_architecture()).eval()
            processor = self._dclip_processor(clip_path)
            regions = load_region_cache(self.runner.records["regions"].outputs["regions_dir"])
            paths = FeatureCachePaths(str(self.cache_dir))
            image_dir = paths.image_features(teacher, processor, regions.fingerprint)
            text_dir = paths.text_features(teacher, processor)
            dataset = self._dataset()
            images = compute_image_features(dataset, regions, teacher, processor, image_dir, progress=self.progress)
            texts = compute_text_features(dataset, teacher, processor, text_dir, progress=self.progress)
            return {
                "image_features_dir": image_dir,
                "text_features_dir": text_dir,
                "counts": {**images.to_dict().get("counts", {}), **texts.to_dict().get("counts", {})},
            }

        return self.runner.run(
            "features",
            {"architecture": self._teacher_architecture()},
            work,
            paths=lambda o: [o["image_features_dir"], o["text_features_dir"]],
            upstream=("data", "base", "regions"),
        )

    def stage_pixels(self) -> dict[str, Any] | None:
        """The student's preprocessed inputs, decoded once (`caches.pixels: false` decodes every epoch instead)."""
        if not (self.experiment.get("caches") or {}).get("pixels", True):
            return None

        def work() -> dict[str, Any]:
            from transformers import CLIPImageProcessor

            from .features import FeatureCachePaths, compute_pixel_cache

            image_processor = CLIPImageProcessor.from_pretrained(self._clip_path())
            folder = FeatureCachePaths(str(self.cache_dir)).pixels(image_processor)
            summary = compute_pixel_cache(self._dataset(), image_processor, folder, progress=self.progress)
            return {"pixels_dir": folder, "counts": dict(summary.to_dict().get("counts", {}))}

        return self.runner.run("pixels", {}, work, paths=lambda o: [o["pixels_dir"]], upstream=("data", "base"))

    # ----- training -----

    def _stage_arguments(self, stage: str, overrides: Mapping[str, Any]):
        from transformers import HfArgumentParser

        from .args import STUDENT_ARGUMENTS, TEACHER_ARGUMENTS, load_stage_config

        # The stage reads the experiment exactly as `train_<stage> --config` would: top-level scalars + its section.
        shared = {k: v for k, v in self.experiment.items() if not isinstance(v, (dict, list))}
        tmp = self.run_dir / "stages" / f"{stage}-args.yaml"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(yaml.safe_dump({**shared, stage: self.experiment.get(stage) or {}}), encoding="utf-8")
        parser = HfArgumentParser(TEACHER_ARGUMENTS if stage == "teacher" else STUDENT_ARGUMENTS)
        parser.set_defaults(**{**load_stage_config(tmp, stage), **overrides})
        return parser.parse_args_into_dataclasses(args=[], look_for_args_file=False)

    def stage_teacher(self) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            from transformers import set_seed

            from modeling_dclip import DCLIPTeacherModel

            from .features import load_image_features, load_text_features
            from .stage_data import TeacherFeatureCollator, TeacherFeatureDataset
            from .train_teacher import train_teacher

            folder = self.run_dir / "teacher"
            _, _, args = self._stage_arguments("teacher", {"output_dir": str(folder)})
            set_seed(args.seed)
            features = self.runner.records["features"].outputs
            image_features = load_image_features(features["image_features_dir"])
            text_features = load_text_features(features["text_features_dir"])
            model = DCLIPTeacherModel.from_clip(self._clip_path(), **self._teacher_architecture())
            train = TeacherFeatureDataset(self._dataset("train"), image_features, text_features, seed=args.seed)
            val = TeacherFeatureDataset(self._dataset("val"), image_features, text_features, seed=args.seed)
            trainer = train_teacher(
                model,
                args,
                train,
                val,
                data_collator=TeacherFeatureCollator(),
                processing_class=self._dclip_processor(self._clip_path()),
                resume_from_checkpoint=_latest_checkpoint(folder),
            )
            best = trainer.state.best_metric
            return {"teacher_dir": str(folder), "best_eval_loss": best, "log": _short_log(trainer.state.log_history)}

        return self.runner.run(
            "teacher",
            {"teacher": _stage_values(self.experiment, "teacher")},
            work,
            paths=lambda o: [o["teacher_dir"]],
            upstream=("features",),
        )

    def stage_targets(self) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            from modeling_dclip import DCLIPTeacherModel

            from .features import (
                FeatureCachePaths,
                compute_teacher_targets,
                load_image_features,
                load_text_features,
            )

            features = self.runner.records["features"].outputs
            image_features = load_image_features(features["image_features_dir"])
            text_features = load_text_features(features["text_features_dir"])
            teacher = DCLIPTeacherModel.from_pretrained(self.runner.records["teacher"].outputs["teacher_dir"]).eval()
            folder = FeatureCachePaths(str(self.cache_dir)).teacher_targets(teacher, image_features, text_features)
            summary = compute_teacher_targets(
                self._dataset(), teacher, image_features, text_features, folder, progress=self.progress
            )
            return {"teacher_targets_dir": folder, "counts": dict(summary.to_dict().get("counts", {}))}

        return self.runner.run(
            "targets", {}, work, paths=lambda o: [o["teacher_targets_dir"]], upstream=("features", "teacher")
        )

    def stage_student(self, variant: str = "dclip") -> dict[str, Any]:
        overrides = dict(CONTROLS.get(variant, {}))

        def work() -> dict[str, Any]:
            from transformers import CLIPProcessor, set_seed

            from modeling_dclip import DCLIPStudentModel

            from .features import load_teacher_targets, load_text_features
            from .stage_data import StudentDistillCollator, StudentDistillDataset
            from .train_student import train_student

            folder = self.run_dir / "students" / variant
            _, _, args = self._stage_arguments("student", {**overrides, "output_dir": str(folder)})
            set_seed(args.seed)
            text_features = load_text_features(self.runner.records["features"].outputs["text_features_dir"])
            if variant == "region_free":
                targets = TextEmbeddingTargets(text_features)
            else:
                targets = load_teacher_targets(self.runner.records["targets"].outputs["teacher_targets_dir"])
            processor = CLIPProcessor.from_pretrained(self._clip_path())
            model = DCLIPStudentModel.from_clip(self._clip_path())
            pixels = None
            if "pixels" in self.runner.records:
                from .features import load_pixel_cache

                pixels = load_pixel_cache(self.runner.records["pixels"].outputs["pixels_dir"])
            datasets = [
                StudentDistillDataset(
                    self._dataset(split),
                    targets,
                    text_features,
                    processor.image_processor,
                    seed=args.seed,
                    pixels=pixels,
                )
                for split in ("train", "val")
            ]
            trainer = train_student(
                model,
                args,
                *datasets,
                data_collator=StudentDistillCollator(processor.tokenizer),
                processing_class=processor,
                resume_from_checkpoint=_latest_checkpoint(folder),
            )
            return {"student_dir": str(folder), "log": _short_log(trainer.state.log_history)}

        upstream = ("features",) if variant == "region_free" else ("features", "targets")
        if "pixels" in self.runner.records:
            upstream += ("pixels",)
        return self.runner.run(
            f"student_{variant}",
            {"student": _stage_values(self.experiment, "student"), "overrides": overrides},
            work,
            paths=lambda o: [o["student_dir"]],
            upstream=upstream,
        )

    # ----- evaluation, Hub folders, reload check -----

    def _synthetic_eval_sets(self) -> tuple[list, list, list]:
        """The demo's held-out sets: full-detail test queries, their hard negatives, attribute zero-shot sets."""
        import csv

        synthetic = self._build_synthetic()
        test = synthetic.splits["test"]
        manifest = self.run_dir / "data" / "synthetic_test.csv"
        manifest.parent.mkdir(parents=True, exist_ok=True)
        tmp = manifest.with_name(f".{manifest.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "caption"])
            for image, captions in zip(test["image"], test["captions"]):
                relative = os.path.relpath(image, synthetic.root)
                writer.writerows([relative, caption] for caption in captions)
        os.replace(tmp, manifest)
        template = synthetic.zero_shot_template.replace("{}", "{c}")
        retrieval = [
            {"name": "synthetic_test", "type": "csv", "path": str(manifest), "image_root": str(synthetic.root)}
        ]
        hard = [{"name": "synthetic_hard_negatives", "path": str(synthetic.hard_negatives_path)}]
        zero_shot = [
            {"name": f"synthetic_{attribute}", "path": str(folder), "templates": [template]}
            for attribute, folder in synthetic.zero_shot_dirs.items()
        ]
        return retrieval, zero_shot, hard

    def stage_evaluate(self) -> dict[str, Any]:
        evaluation = dict(self.experiment.get("evaluation") or {})
        students = [name for name in self.runner.records if name.startswith("student_")]

        def work() -> dict[str, Any]:
            from .evaluate import evaluate_models

            retrieval = list(evaluation.get("retrieval") or [])
            zero_shot = list(evaluation.get("zero_shot") or [])
            hard = list(evaluation.get("hard_negatives") or [])
            if evaluation.get("synthetic", "synthetic" in self.experiment["data"]):
                extra = self._synthetic_eval_sets()
                retrieval, zero_shot, hard = retrieval + extra[0], zero_shot + extra[1], hard + extra[2]
            if not (retrieval or zero_shot or hard):
                raise ValueError("Section evaluation names no retrieval, zero-shot or hard-negative set.")
            folder = self.run_dir / "eval"
            evaluate_models(
                self.model_paths(),
                retrieval,
                zero_shot,
                hard,
                folder,
                base="base",
                batch_size=int(evaluation.get("batch_size", 64)),
                max_images=evaluation.get("max_images"),
                cache_dir=self.cache_dir / "embeddings",
                seed=self.seed,
                progress=self.progress,
            )
            return {"results_json": str(folder / "results.json"), "results_md": str(folder / "results.md")}

        return self.runner.run(
            "evaluate",
            {"evaluation": evaluation},
            work,
            paths=lambda o: [o["results_json"]],
            upstream=("base", *students),
        )

    def model_paths(self) -> dict[str, str]:
        """Every model of the run by display name: the base, the DCLIP student and the controls."""
        models = {"base": self._clip_path()}
        for name, record in self.runner.records.items():
            if name.startswith("student_"):
                models[name.removeprefix("student_")] = record.outputs["student_dir"]
        return models

    def stage_hub(self) -> dict[str, Any]:
        hub = self.experiment.get("hub") or {}

        def work() -> dict[str, Any]:
            from hub_card.card import build_card
            from hub_card.push import load_checkpoint, save_for_hub

            results_path = Path(self.runner.records["evaluate"].outputs["results_json"])
            results = json.loads(results_path.read_text(encoding="utf-8"))
            plots = sorted(str(p) for p in results_path.parent.glob("*.png"))
            folders = {}
            timings = self.runner.timings()
            for kind, source, repo_key, default_repo in (
                ("student", self.runner.records["student_dclip"].outputs["student_dir"], "student_repo_id", "dclip"),
                ("teacher", self.runner.records["teacher"].outputs["teacher_dir"], "teacher_repo_id", "dclip-teacher"),
            ):
                repo_id = hub.get(repo_key) or f"{hub.get('organization', 'your-org')}/{default_repo}-{self._name()}"
                card = build_card(
                    kind=kind,
                    repo_id=repo_id,
                    run_args=self.experiment,
                    results=results,
                    model_key="dclip" if kind == "student" else None,
                    base_key="base",
                    plots=plots,
                    license=hub.get("license", "apache-2.0"),
                    hardware=hub.get("hardware") or _hardware(),
                    training_time=_training_time(timings),
                )
                model, processor, _ = load_checkpoint(source, kind=kind)
                folder = self.run_dir / "hub" / kind
                save_for_hub(model, processor, folder, card, plots=plots, overwrite=True)
                folders[kind] = str(folder)
            return {"folders": folders}

        return self.runner.run(
            "hub",
            {"hub": hub},
            work,
            paths=lambda o: list(o["folders"].values()),
            upstream=("teacher", "student_dclip", "evaluate"),
        )

    def stage_reload_check(self) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            folders = self.runner.records["hub"].outputs["folders"]
            return {"checks": reload_check(folders["student"], folders["teacher"], self.run_dir)}

        return self.runner.run("reload_check", {}, work, upstream=("hub",))

    def _name(self) -> str:
        return str(self.experiment.get("name") or "run")

    # ----- everything -----

    def preflight(self) -> None:
        """Fail before any work when a model or detector the run needs is missing (offline Hub id, YOLO weights)."""
        base = self.experiment["base"]
        if base.get("clip_name_or_path"):
            _check_model_available(base["clip_name_or_path"])
        self._region_source()  # a YOLO source checks its weights file here

    def run(self) -> dict[str, Any]:
        """Run (or resume) every stage and return the summary that `main` prints."""
        started = time.perf_counter()
        self.preflight()
        self.stage_data()
        self.stage_base()
        self.stage_regions()
        self.stage_features()
        self.stage_teacher()
        self.stage_targets()
        self.stage_pixels()
        self.stage_student("dclip")
        for control in self.experiment.get("controls") or []:
            self.stage_student(control)
        self.stage_evaluate()
        self.stage_hub()
        self.stage_reload_check()
        summary = {
            "run_dir": str(self.run_dir),
            "seconds": round(time.perf_counter() - started, 1),
            "stages": self.runner.timings(),
            "outputs": {name: record.outputs for name, record in self.runner.records.items()},
        }
        write_json_atomic(self.run_dir / "summary.json", summary)
        return summary


class TextEmbeddingTargets:
    """The region-free control's "teacher": frozen CLIP's own caption embedding `t` as the image target."""

    def __init__(self, text_features: Any) -> None:
        self.text_features = text_features

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self.text_features

    def get(self, image_id: str, caption_index: int):
        import numpy as np

        return self.text_features.get(image_id, caption_index)[1].astype(np.float32)


def _latest_checkpoint(folder: Path) -> str | None:
    """Continue a killed training stage from its newest checkpoint (same seed → same result as uninterrupted)."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _short_log(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in history if any(k.startswith("eval_") for k in entry)][-5:]


def _check_model_available(name_or_path: str) -> None:
    """Fail before any work when the base CLIP is neither a local folder nor reachable (offline Hub id)."""
    if os.path.isdir(name_or_path):
        return
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_OFFLINE

    cached = try_to_load_from_cache(name_or_path, "config.json")
    if HF_HUB_OFFLINE and not isinstance(cached, str):
        raise FileNotFoundError(
            f"Base CLIP {name_or_path!r} is not a local folder and is not in the Hugging Face cache, and the Hub is "
            "offline (HF_HUB_OFFLINE=1). Download it on a machine with internet (`hf download "
            f"{name_or_path}`) and copy the cache, or point base.clip_name_or_path at a local folder."
        )


def reload_check(student_dir: str, teacher_dir: str, work_dir: Path) -> dict[str, str]:
    """Load the exported student with stock `CLIPModel` and the teacher with `trust_remote_code` in a fresh process.

    The fresh process hides this package (as on a user's machine that never installed it), so the teacher can only
    load through the code saved in its folder.
    """
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys

        class HidePackage(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("modeling_dclip", "training", "hub_card"):
                    raise ImportError(name + " is hidden: a user of the Hub folder does not have it")

        sys.meta_path.insert(0, HidePackage())
        from transformers import AutoModel, CLIPModel, CLIPProcessor
        student = CLIPModel.from_pretrained({student_dir!r})
        CLIPProcessor.from_pretrained({student_dir!r})
        teacher = AutoModel.from_pretrained({teacher_dir!r}, trust_remote_code=True)
        print(type(student).__name__, type(teacher).__name__, type(teacher).__module__)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(work_dir / "hf_modules"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=work_dir, env=env, capture_output=True, text=True, timeout=600
    )
    if result.returncode != 0:
        raise RuntimeError(f"The exported folders do not reload in a fresh process:\n{result.stderr[-4000:]}")
    student_class, teacher_class, teacher_module = result.stdout.split()[-3:]
    if student_class != "CLIPModel" or teacher_class != "DCLIPTeacherModel":
        raise RuntimeError(f"Unexpected classes after reload: {result.stdout.strip()}")
    return {"student": f"stock {student_class}", "teacher": f"{teacher_class} from remote code ({teacher_module})"}


def _hardware() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return f"CPU only ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def _training_time(timings: Mapping[str, Any]) -> str:
    parts = [f"{name} {value} s" for name, value in timings.items() if name in ("teacher", "student_dclip")]
    return ", ".join(parts) or "not recorded"


# --------------------------------------------------------------------------------------------------------------------
# Summary and command line
# --------------------------------------------------------------------------------------------------------------------

SUMMARY_METRICS = (
    ("T→I R@1", "t2i_recall@1"),
    ("T→I R@5", "t2i_recall@5"),
    ("T→I R@10", "t2i_recall@10"),
    ("I→T R@1", "i2t_recall@1"),
    ("I→T R@5", "i2t_recall@5"),
    ("I→T R@10", "i2t_recall@10"),
    ("T→I MAP (MRR)", "t2i_mrr"),
    ("I→T MAP (MRR)", "i2t_mrr"),
    ("T→I mAP", "t2i_map"),
    ("I→T mAP", "i2t_map"),
)


def _fmt(value: Any, suffix: str = "") -> str:
    return f"{value:.2f}{suffix}" if isinstance(value, (int, float)) else "–"


def summary_table(results: Mapping[str, Any], base: str = "base") -> str:
    """A Markdown table per retrieval set (models × R@K, MRR, mAP, relative gain of R@1) plus zero-shot retention."""
    models = results.get("models") or {}
    lines: list[str] = []
    datasets: list[str] = []
    for per_dataset in models.values():
        for dataset, metrics in per_dataset.items():
            if dataset not in datasets and isinstance(metrics, Mapping) and "t2i_recall@1" in metrics:
                datasets.append(dataset)
    for dataset in datasets:
        header = ["model", *[label for label, _ in SUMMARY_METRICS], "T→I R@1 gain", "I→T R@1 gain"]
        lines += [f"### {dataset}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        base_metrics = (models.get(base) or {}).get(dataset) or {}
        for name, per_dataset in models.items():
            metrics = per_dataset.get(dataset) or {}
            gains = []
            for key in ("t2i_recall@1", "i2t_recall@1"):
                value, reference = metrics.get(key), base_metrics.get(key)
                gains.append(
                    _fmt(100.0 * (value - reference) / reference, " %")
                    if name != base and isinstance(value, (int, float)) and reference
                    else "–"
                )
            cells = [name, *[_fmt(metrics.get(key)) for _, key in SUMMARY_METRICS], *gains]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    hard_sets = []
    for per_dataset in models.values():
        for dataset, metrics in per_dataset.items():
            if dataset not in hard_sets and isinstance(metrics, Mapping) and "hn_accuracy" in metrics:
                hard_sets.append(dataset)
    for dataset in hard_sets:
        swaps = sorted(
            key
            for metrics in (per.get(dataset) or {} for per in models.values())
            for key in metrics
            if key.startswith("hn_")
            and key.endswith("_accuracy")
            and key not in ("hn_accuracy", "hn_pairwise_accuracy")
        )
        swaps = list(dict.fromkeys(swaps))
        header = ["model", "vs all", *[key.removeprefix("hn_").removesuffix("_accuracy") for key in swaps]]
        lines += [f"### {dataset} (hard negatives: % true caption ranked first)", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, per_dataset in models.items():
            metrics = per_dataset.get(dataset) or {}
            lines.append("| " + " | ".join([name, *[_fmt(metrics.get(k)) for k in ("hn_accuracy", *swaps)]]) + " |")
        lines.append("")
    retention = results.get("retention") or {}
    if retention:
        lines += ["### zero-shot top-1 retention (model / base)", "", "| model | set | retention |", "|---|---|---|"]
        for name, per_set in retention.items():
            if isinstance(per_set, Mapping):
                for dataset, value in per_set.items():
                    percent = 100.0 * value if isinstance(value, (int, float)) else None  # stored as a ratio
                    lines.append(f"| {name} | {dataset} | {_fmt(percent, ' %')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`dclip run --config EXPERIMENT.yaml [--output_dir DIR] [--cache_dir DIR] [--smoke] [--force STAGE ...]`."""
    parser = argparse.ArgumentParser(
        prog="dclip run", description="Run (or resume) the whole DCLIP pipeline of an experiment file."
    )
    parser.add_argument("--config", required=True, help="experiment YAML (training/configs/experiments/*.yaml)")
    parser.add_argument("--output_dir", default=None, help="run folder (default: runs/<experiment name>)")
    parser.add_argument("--cache_dir", default=None, help="shared cache folder (default: <output_dir>/cache)")
    parser.add_argument("--smoke", action="store_true", help="apply the experiment's `smoke:` sizes (CI)")
    parser.add_argument("--force", nargs="*", default=[], help="re-run these stages (or `all`) although up to date")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit(
            "dclip run drives every stage from one process; under several processes each would write the same "
            "outputs. Run it without `accelerate launch`, or launch the heavy stages (training.extract_regions, "
            "training.train_teacher, training.train_student, training.evaluate) with accelerate (docs/pipeline.md)."
        )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    experiment = load_experiment(args.config)
    if args.smoke:
        experiment = apply_smoke(experiment)
    run_dir = args.output_dir or os.path.join("runs", str(experiment.get("name") or Path(args.config).stem))
    pipeline = Pipeline(experiment, run_dir, cache_dir=args.cache_dir, force=set(args.force), progress=not args.quiet)
    summary = pipeline.run()
    results_path = summary["outputs"]["evaluate"]["results_json"]
    results = json.loads(Path(results_path).read_text(encoding="utf-8"))
    print("\n" + summary_table(results))
    print(f"Run folder: {summary['run_dir']} ({summary['seconds']} s; stages: {summary['stages']})")
    for label, path in _written_paths(summary).items():
        print(f"  {label:<22} {path}")
    return 0


def _written_paths(summary: Mapping[str, Any]) -> dict[str, str]:
    outputs = summary["outputs"]
    paths = {
        "dataset": outputs["data"]["dataset_dir"],
        "base CLIP": outputs["base"]["clip"],
        "regions cache": outputs["regions"]["regions_dir"],
        "teacher": outputs["teacher"]["teacher_dir"],
        "teacher targets": outputs["targets"]["teacher_targets_dir"],
    }
    for name, record in outputs.items():
        if name.startswith("student_"):
            paths[f"student ({name.removeprefix('student_')})"] = record["student_dir"]
    paths["results.json"] = outputs["evaluate"]["results_json"]
    for kind, folder in outputs["hub"]["folders"].items():
        paths[f"Hub folder ({kind})"] = folder
    return paths


if __name__ == "__main__":
    raise SystemExit(main())
