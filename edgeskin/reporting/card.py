"""A markdown model card, written from the same numbers as metrics.json."""

from __future__ import annotations

from pathlib import Path

from edgeskin.reporting.card_results import (_diagnosis_head, _figures, _gate, _operating_points, _results, _robustness,
                                            format_value, sets_section)

DISCLAIMER = (
    "edgeskin is a screening aid for dermoscopic images, not a diagnostic device. It has not been "
    "cleared or approved by any regulator. Its output must never replace examination by a qualified "
    "clinician, and a 'benign' result does not rule out melanoma or any other skin cancer: any lesion "
    "that is changing, bleeding, itching or otherwise worrying should be seen by a doctor."
)


# The ISIC 2017 challenge's published test-set ROC AUCs for melanoma (part 3), from its
# leaderboard as reported in Codella et al., "Skin lesion analysis toward melanoma
# detection: a challenge at ISBI 2017", ISBI 2018 (arXiv:1710.05006). The only
# figures on the card that this code does not compute.


def render(result: dict, info: dict, config: dict | None = None, figure_dir: str = "figures") -> str:
    """The card for one evaluation result.

    info is the model's embedded metadata and config the training run's
    config.json (either may be empty): the card states only what they record.
    """
    config = config or {}
    training = {**{k: config[k] for k in ("data", "counts", "notes", "command", "seconds") if k in config},
                **info.get("training", {})}
    sections = (
        _header(result, info),
        _model(result, info, config),
        _data(result, training, config),
        _training(training, config),
        _results(result),
        sets_section(result),
        _operating_points(result, info),
        _diagnosis_head(result, figure_dir),
        _robustness(result),
        _gate(result, info),
        _figures(result, figure_dir),
        _limitations(result, training),
    )
    return "\n".join(line for section in sections if section for line in section + [""])


def _header(result: dict, info: dict) -> list[str]:
    model = result["model"]
    return [
        f"# Model card: edgeskin {info.get('version', '')} ({model.get('quantization') or model['kind']})",
        "",
        f"> **Medical disclaimer.** {DISCLAIMER}",
        "",
        "## Intended use",
        "- Ranks dermoscopic images of a single pigmented skin lesion by their probability of malignancy, "
        "to help decide which lesions a clinician should look at first or refer.",
        "- A screening aid, not a diagnosis. At the default `screening` operating point the model is tuned to "
        "miss as few malignant lesions as possible, at the cost of many false alarms.",
        "- Not for clinical photographs, non-dermoscopic phone pictures, mucosal or nail lesions, or children.",
    ]


def _model(result: dict, info: dict, config: dict) -> list[str]:
    model = result["model"]
    # The run's config.json when it is at hand, else what the model's own metadata records of it.
    options = config.get("options") or info.get("training", {}).get("options", {})
    net = options.get("model") or info.get("training", {}).get("model", {})
    size = info.get("input", {}).get("size", net.get("image_size"))
    return [
        "## Model",
        f"- MobileNetV2 (alpha {net.get('alpha', 'not recorded')}, {size}×{size} input), backbone weights "
        f"`{net.get('weights', 'not recorded')}`, fine-tuned from `{options.get('fine_tune_from', 'not recorded')}`; "
        "preprocessing is inside the graph, so the model takes raw RGB pixels 0–255.",
        _output_line(model, info),
    ]


def _output_line(model: dict, info: dict) -> str:
    head = f"- File: `{model['name']}` ({model.get('quantization') or model['kind']}); labels `benign`, `malignant`; output: "
    cal = info.get("score_calibration")
    if cal:
        return (head + f"probabilities calibrated by a Platt map carried as standard score-calibration metadata "
                f"(slope {cal['slope']:.4f}, offset {cal['offset']:.4f}, on the inverse logistic of the model's output; "
                f"fitted on the {cal.get('fitted_on', 'calibration split')}).")
    if model.get("temperature"):
        return head + f"temperature-calibrated probabilities (T = {model['temperature']:.3f})."
    return f"- File: `{model['name']}`."


SOURCES = {
    "isic-binary": "the ISIC-archive derived \"Skin Cancer: Malignant vs. Benign\" set (Claudio Fanconi), 224×224 JPEGs",
    "ham10000": "HAM10000 (Tschandl et al. 2018; ViDIR Vienna and a Queensland practice), 200×150 JPEGs at about "
                "quality 75 with 4:2:0 chroma, lesion ids and seven diagnoses",
    "isic2017": "the ISIC 2017 challenge, part 3 (Codella et al.), 256×256 JPEGs, official train and val splits "
                "(its test split is never read in training)",
}


def source_names(data) -> list[str]:
    """The training sets' folder names (a manifest's stem) from a run's "a + b + c" data record: no machine's paths."""
    return [Path(part.strip()).stem if part.strip().endswith(".csv") else Path(part.strip()).name
            for part in str(data or "").split(" + ") if part.strip()]


def _sources(config: dict, training: dict) -> list[str]:
    """One line a training source, with its counts, and each source's own validation figures."""
    per_source = config.get("sources") or training.get("sources", {})
    names = source_names(training.get("data"))
    if len(per_source.get("train", {})) < 2:
        # Only the metadata's record of the sets: their names, without per-source counts.
        return ["- Training sources, trained on as one set:"] + [
            f"  - `{name}`: {SOURCES.get(name, 'a local set')}." for name in names] if len(names) > 1 else []
    val = config.get("calibration", {}).get("per_source", {})
    lines = ["- Training sources, trained on as one set:"]
    for name, c in per_source["train"].items():
        v = per_source.get("val", {}).get(name, {})
        lines.append(f"  - `{name}`: {SOURCES.get(name, 'a local set')}. Train {c['benign']} benign + "
                     f"{c['malignant']} malignant; validation {v.get('benign', 0)} + {v.get('malignant', 0)}.")
    if val:
        qualities = ", ".join(map(str, config.get("options", {}).get("calibration_qualities", [])))
        lines += ["", f"  Validation figures of each source alone (calibration pool: validation re-encoded at JPEG "
                  f"quality {qualities}), so that one large source cannot hide a poor one:", "",
                  "  | source | pool images | ROC AUC | screening sensitivity | screening specificity | ECE | "
                  "diagnosis balanced accuracy |", "  |---|---|---|---|---|---|---|"]
        for name, r in val.items():
            dx = r.get("diagnosis", {}).get("balanced_accuracy")
            lines.append(f"  | `{name}` | {r['images']} | {format_value(r.get('auc'))} | {format_value(r.get('screening_sensitivity'))} | "
                         f"{format_value(r.get('screening_specificity'))} | {format_value(r.get('ece'))} | {format_value(dx)} |")
        lines.append("")
    return lines


def _data(result: dict, training: dict, config: dict) -> list[str]:
    m, d = result["metrics"], result["data"]
    counts = training.get("counts", {})
    names = source_names(training.get("data"))
    lines = [
        "## Data",
        f"- Training source{'s' * (len(names) > 1)}: `{' + '.join(names) or 'not recorded'}`"
        + (f" — {SOURCES[names[0]]}." if len(names) == 1 and names[0] in SOURCES else "."),
        *_sources(config, training),
    ]
    if counts:
        tr, va = counts.get("train", {}), counts.get("val", {})
        lines.append(f"- Training split: {tr.get('benign', 0)} benign + {tr.get('malignant', 0)} malignant; calibration "
                     f"(validation) split: {va.get('benign', 0)} benign + {va.get('malignant', 0)} malignant, carved out "
                     "of train/ with near-duplicates kept on one side. test/ was never read in training.")
    for note in training.get("notes", []):
        lines.append(f"- {note[0].upper() + note[1:]}.")
    if "audit_flags" in config:
        flags = config["audit_flags"]
        lines.append("- Shortcut audit of the training images (`audit/` in the run folder): "
                     + (f"{len(flags)} properties predict the label on their own: {', '.join(flags)}."
                        if flags else "no property predicts the label on its own."))
    lines.append(f"- Evaluation set: `{source_names(d['source'])[0]}`, {d['split']} split: {d['images']} images, of which "
                 + (f"{d['near_duplicates_left_out']} near-duplicate a training or calibration image and were left out "
                    if d.get("training_images_checked", True) else
                    f"{d['near_duplicates_left_out']} near-duplicate one of the set's own train/val images and were left "
                    "out; whether any near-duplicates one of the model's own training images was not checked: no run "
                    "record was found beside the model or given with --run ")
                 + f"({d['evaluated']} evaluated: {m['n_malignant']} malignant, {m['n_benign']} benign).")
    return lines


def _started_from(before: dict | None) -> list[str]:
    """The run this one went on from (train --start-from), oldest first, with its own command and time."""
    if not before:
        return []
    minutes = f", {before['seconds'] / 60:.0f} min" if before.get("seconds") else ""
    return [*_started_from(before.get("started_from")),
            f"- First, the run it started from ({Path(before['run']).name}{minutes}): `{before.get('command')}`",
            "- Then this run, from that run's network (phase 1 skipped):"]


def _training(training: dict, config: dict) -> list[str]:
    aug = config.get("options", {}).get("augmentation")
    lines = [
        "## Training",
        *_started_from(config.get("started_from")),
        f"- Command: `{training.get('command', 'not recorded')}`",
        f"- Seed: {training.get('seed', 'not recorded')}"
        + (f" (validation split drawn with seed {training['split_seed']})" if training.get("split_seed") is not None else "")
        + "; wall time: "
        + (f"{training['seconds'] / 60:.0f} min" + (f" on {config['cpus']} CPU cores" if config.get("cpus") else "")
           if training.get("seconds") else "not recorded") + ".",
    ]
    if aug:
        harmonize = (f"every training image re-encoded once at JPEG quality {aug['harmonize_quality']} 4:2:0, then "
                     if aug.get("harmonize_quality") else "")
        chroma = config.get("options", {}).get("model", {}).get("chroma_subsampling")
        lines.append(
            "- Compression-blind recipe: "
            + ("chroma halved to 4:2:0 inside the model graph for every image, in training and on the device; " if chroma else "")
            + f"{harmonize}on every draw a random crop ({aug['crop_scale'][0]:.2f}–{aug['crop_scale'][1]:.2f} "
            f"of the area), flips, 90° rotations, colour temperature ±{aug['temperature']:.2f}, brightness, contrast and "
            f"saturation ±{aug['brightness']:.2f}, and a JPEG re-encode at a random quality "
            f"{aug['jpeg_quality'][0]}–{aug['jpeg_quality'][1]} with random {'/'.join(aug['subsampling'])} chroma "
            f"(probability {aug['jpeg_probability']:.2f}).")
    lines += _weights(config)
    qualities = config.get("options", {}).get("calibration_qualities")
    if qualities:
        lines.append(f"- Model selection, temperature and operating points on the calibration split re-encoded at JPEG "
                     f"quality {', '.join(map(str, qualities))} with 4:2:0 chroma, as phones save images.")
    return lines


def _diagnosis_training(options: dict) -> str:
    """How the diagnosis head learnt, in words: with the backbone or on its frozen features, and its loss."""
    if options.get("diagnosis_in_fine_tuning"):
        how = "trained with the benign/malignant head on cached frozen features, then through the fine-tuned layers beside it"
    else:
        how = ("trained with the benign/malignant head on cached frozen features, kept out of fine-tuning, then refitted "
               "on the fine-tuned features")
    if options.get("diagnosis_loss") == "balanced_softmax":
        return how + (f"; a balanced softmax (the training prior added to its logits in the loss only), label smoothing "
                      f"{options.get('label_smoothing', 0.0)}")
    return how + "; " + {"inverse": "each diagnosis weighted by its inverse frequency",
                         "sqrt": "each diagnosis weighted by its inverse square-root frequency",
                         "none": "diagnoses unweighted"}[options.get("diagnosis_weighting", "inverse")]


def _weights(config: dict) -> list[str]:
    """How imbalance across sources, classes and diagnoses was handled."""
    options = config.get("options", {})
    lines = []
    if options.get("class_weights"):
        several = len(config.get("sources", {}).get("train", {})) > 1
        lines.append("- Loss weights: " + ("within each source the two classes weigh the same, so a source's prevalence "
                     "cannot become a cue for the label, and each source's total weight grows with the square root of "
                     "its size." if several else "the two classes weigh the same."))
    if options.get("model", {}).get("diagnoses"):
        lines.append(f"- Diagnosis head ({', '.join(options['model']['diagnoses'])}): " + _diagnosis_training(options)
                     + f", loss weight {options.get('diagnosis_loss_weight')}, L2 {options['model'].get('diagnosis_l2')} "
                     "on its weights; images with no diagnosis train the benign/malignant head only.")
    if options.get("int8_grid"):
        lines.append("- int8: the convolutions that never train were put on the int8 file's own weight grid before "
                     "training (`--int8-grid`), so the file reproduces them exactly and the layers above trained on them.")
    return lines




def _limitations(result: dict, training: dict) -> list[str]:
    sources = [d for d in str(training.get("data", "")).split(" + ") if d]
    names = result["model"].get("diagnoses") or []
    return [
        "## Limitations",
        (f"- {len(sources)} training sources, all dermoscopy from ISIC-archive contributors; performance on other "
         if len(sources) > 1 else "- One source: every image comes from the ISIC archive through one public "
         "re-packaging; performance on other ")
        + "clinics, dermoscopes and populations is unknown and likely lower.",
        "- No skin type is recorded in any set (HAM10000 records age, sex and body site, unused here): fairness "
        "across Fitzpatrick skin types cannot be measured, and ISIC is dominated by light skin.",
        "- Dermoscopy only: clinical or phone photographs without a dermoscope are out of scope.",
        (f"- The diagnosis head knows only {', '.join(names)}: a lesion of any other kind still gets one of them. "
         if names else "- Binary labels with no subtypes. ")
        + "Where a set records no lesion identity, same-lesion images were found with a perceptual hash, which can "
        "miss heavily cropped or rotated copies.",
        "- The evaluation set is small; read every figure with its interval.",
        "",
        "## Medical disclaimer",
        DISCLAIMER,
    ]
