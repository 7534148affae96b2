"""A markdown model card, written from the same numbers as metrics.json."""

from __future__ import annotations

from pathlib import Path

DISCLAIMER = (
    "edgeskin is a screening aid for dermoscopic images, not a diagnostic device. It has not been "
    "cleared or approved by any regulator. Its output must never replace examination by a qualified "
    "clinician, and a 'benign' result does not rule out melanoma or any other skin cancer: any lesion "
    "that is changing, bleeding, itching or otherwise worrying should be seen by a doctor."
)


def _ci(entry, fmt="{:.3f}") -> str:
    def f(v):
        return "n/a" if v is None else fmt.format(v)

    lo, hi = entry["ci95"]
    return f"{f(entry['value'])} ({f(lo)}–{f(hi)})"


def render(result: dict, info: dict, config: dict | None = None, figure_dir: str = "figures") -> str:
    """The card for one evaluation result.

    info is the model's embedded metadata and config the training run's
    config.json (either may be empty): the card states only what they record.
    """
    m, d, model = result["metrics"], result["data"], result["model"]
    config = config or {}
    training = {**{k: config[k] for k in ("data", "counts", "notes", "command", "seconds") if k in config},
                **info.get("training", {})}
    options = config.get("options", {})
    net = options.get("model", {})
    size = info.get("input", {}).get("size", net.get("image_size"))
    counts = training.get("counts", {})
    checks = info.get("checks", {})
    lines = [
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
        "",
        "## Model",
        f"- MobileNetV2 (alpha {net.get('alpha', 'not recorded')}, {size}×{size} input), backbone weights "
        f"`{net.get('weights', 'not recorded')}`, fine-tuned from `{options.get('fine_tune_from', 'not recorded')}`; "
        "preprocessing is inside the graph, so the model takes raw RGB pixels 0–255.",
        f"- File: `{model['name']}` ({model.get('quantization') or model['kind']}); labels `benign`, `malignant`; "
        f"output: temperature-calibrated probabilities (T = {model['temperature']:.3f})."
        if model.get("temperature") else f"- File: `{model['name']}`.",
        "",
        "## Data",
        f"- Training source: `{training.get('data', 'not recorded')}`"
        + (" — the ISIC-archive derived \"Skin Cancer: Malignant vs. Benign\" set (Claudio Fanconi), dermoscopy JPEGs."
           if "isic" in str(training.get("data", "")).lower() else "."),
    ]
    if counts:
        tr, va = counts.get("train", {}), counts.get("val", {})
        lines.append(f"- Training split: {tr.get('benign', 0)} benign + {tr.get('malignant', 0)} malignant; calibration "
                     f"(validation) split: {va.get('benign', 0)} benign + {va.get('malignant', 0)} malignant, carved out "
                     "of train/ with near-duplicates kept on one side. test/ was never read in training.")
    for note in training.get("notes", []):
        lines.append(f"- {note[0].upper() + note[1:]}.")
    lines += [
        f"- Evaluation set: `{d['source']}`, {d['split']} split: {d['images']} images, of which "
        f"{d['near_duplicates_left_out']} near-duplicate a training or calibration image and were left out "
        f"({d['evaluated']} evaluated: {m['n_malignant']} malignant, {m['n_benign']} benign).",
        "",
        "## Training",
        f"- Command: `{training.get('command', 'not recorded')}`",
        f"- Seed: {training.get('seed', 'not recorded')}; wall time: "
        + (f"{training['seconds'] / 60:.0f} min" + (f" on {config['cpus']} CPU cores" if config.get("cpus") else "")
           if training.get("seconds") else "not recorded") + ".",
        "",
        "## Results on the evaluation set",
        "All intervals are 95% percentile bootstrap intervals (1,000 resamples of the evaluated images).",
        "",
        "| metric | value (95% CI) |",
        "|---|---|",
        f"| ROC AUC | {_ci(m['roc_auc'])} |",
        f"| PR AUC (average precision) | {_ci(m['pr_auc'])} |",
        f"| Brier score | {_ci(m['brier'])} |",
        f"| ECE, 15 bins | {_ci(m['ece'])} |",
    ]
    if "ece_before_temperature" in m:
        lines.append(f"| ECE before temperature scaling | {_ci(m['ece_before_temperature'])} |")
    if "compare" in result:
        c, cname = result["compare"]["metrics"], result["compare"]["model"]["name"]
        lines.append(f"| ROC AUC of `{cname}` on the same images | {_ci(c['roc_auc'])} |")
    for t, v in m["specificity_at_sensitivity"].items():
        lines.append(f"| specificity at sensitivity ≥ {t} | {_ci(v)} |")
    lines += [
        "",
        "## Operating points",
        "Chosen on the calibration split"
        + (" from the int8 model's own outputs" if model.get("quantization") == "int8" else "")
        + "; measured here on the evaluation set. Malignant when `malignant_probability >= threshold`.",
        "",
        "| operating point | threshold | sensitivity | specificity | PPV | NPV | TP / FN / FP / TN |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, pt in m["thresholds"].items():
        c = pt["confusion"]
        lines.append(f"| {name} | {pt['threshold']:.4f} | {_ci(pt['sensitivity'])} | {_ci(pt['specificity'])} | "
                     f"{_ci(pt['ppv'])} | {_ci(pt['npv'])} | {c['tp']} / {c['fn']} / {c['fp']} / {c['tn']} |")
    if checks:
        lines += ["", f"Quantization check on the calibration split: float AUC {checks.get('float_auc', float('nan')):.4f}, "
                      f"{model.get('quantization')} AUC {checks.get('auc', float('nan')):.4f}; screening decisions agree on "
                      f"{checks.get('screening_decision_agreement', float('nan')):.1%} of images."]
    lines += ["", "## Figures", ""]
    for f in m.get("figures", []):
        name = Path(f).stem.replace("_", " ")
        lines.append(f"![{name}]({figure_dir}/{Path(f).name})")
    lines += [
        "",
        "## Limitations",
        "- One source: every image comes from the ISIC archive through one public re-packaging; performance on other "
        "clinics, dermoscopes and populations is unknown and likely lower.",
        "- No skin-type, age, sex, body-site or patient metadata: fairness across Fitzpatrick skin types cannot be "
        "measured, and ISIC is dominated by light skin.",
        "- Dermoscopy only: clinical or phone photographs without a dermoscope are out of scope.",
        "- Binary labels with no subtypes; lesion identity is unknown, so same-lesion images were found with a "
        "perceptual hash, which can miss heavily cropped or rotated copies.",
        "- The evaluation set is small; read every figure with its interval.",
        "",
        "## Medical disclaimer",
        DISCLAIMER,
        "",
    ]
    return "\n".join(lines)
