"""The model card's result sections: headline figures, every test set, operating points, the diagnosis head, robustness and the gate."""

from __future__ import annotations

import re
from pathlib import Path

_ISIC2017_NOTE = (
    "Published ISIC 2017 figures (challenge part 3, melanoma classification; Codella et al., ISBI 2018, "
    "arXiv:1710.05006) are the challenge's own, quoted, not measured here: they are on its full test split, ours "
    "on the test images left after near-duplicates of training images are removed (the README also gives ours on "
    "the full split). The challenge ranked "
    "melanoma against nevi and seborrheic keratoses; where a set's only malignant diagnosis is melanoma, as in "
    "ISIC 2017's published labels, our malignant-vs-benign ROC AUC ranks the same thing.")


def format_value(v, fmt="{:.3f}") -> str:
    """A figure as text, "n/a" for a missing one."""
    return "n/a" if v is None else fmt.format(v)


def _ci(entry, fmt="{:.3f}") -> str:
    lo, hi = entry["ci95"]
    return f"{format_value(entry['value'], fmt)} ({format_value(lo, fmt)}–{format_value(hi, fmt)})"


def _results(result: dict) -> list[str]:
    m = result["metrics"]
    lines = [
        "## Results on the evaluation set",
        "All intervals are 95% percentile bootstrap intervals ("
        + (f"{result['bootstrap']:,} resamples" if "bootstrap" in result else "resamples")
        + " of the evaluated images).",
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
    if "ece_before_platt" in m:
        lines.append(f"| ECE before the Platt map | {_ci(m['ece_before_platt'])} |")
    if "compare" in result:
        c, cname = result["compare"]["metrics"], result["compare"]["model"]["name"]
        lines.append(f"| ROC AUC of `{cname}` on the same images | {_ci(c['roc_auc'])} |")
    for t, v in m["specificity_at_sensitivity"].items():
        lines.append(f"| specificity at sensitivity ≥ {t} | {_ci(v)} |")
    return lines


def _set_row(label: str, model: str, m: dict, dx: dict | None, left_out) -> str:
    pt = m["thresholds"].get("screening") or next(iter(m["thresholds"].values()))
    diagnosis = f"{_ci(dx['balanced_accuracy'])} | {_ci(dx['top3_accuracy'])}" if dx else "– | –"
    return (f"| {label} | `{model}` | {m['n']} ({m['n_malignant']} malignant) | {left_out} | {_ci(m['roc_auc'])} | "
            f"{_ci(pt['sensitivity'])} | {_ci(pt['specificity'])} | {_ci(m['ece'])} | {diagnosis} |")


def _is_isic2017(name: str) -> bool:
    return re.sub(r"[^a-z0-9]", "", name.lower()).startswith("isic2017")


ISIC2017_PUBLISHED_MELANOMA_AUC = (("RECOD Titans", 0.874), ("Casio and Shinshu University", 0.868))


def sets_section(result: dict) -> list[str]:
    sets = result.get("sets")
    if not sets:
        return []
    lines = [
        "## Results by test set",
        "Each set's test split (every image, for a set without one), less its test images that near-duplicate "
        "one of its own training or validation images"
        + (" or any image the model was trained or calibrated on, from any source"
           if "model's own training images" in next(iter(sets.values()))["data"].get("rule", "") else "")
        + ". Sensitivity and specificity at the `screening` operating "
        "point (the first point, for a model without it); diagnosis figures on the images whose diagnosis the "
        "model knows. 95% bootstrap intervals.",
        "",
        "| test set | model | images | near-duplicates left out | ROC AUC | screening sensitivity | "
        "screening specificity | ECE | diagnosis balanced accuracy | diagnosis top-3 accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in sets.items():
        label = f"{name} (primary)" if entry.get("primary") else name
        left_out = entry["data"].get("near_duplicates_left_out", 0)
        if not entry["data"].get("training_images_checked", True):
            left_out = f"{left_out} (the model's training images not checked)"
        lines.append(_set_row(label, result["model"]["name"], entry["metrics"], entry.get("diagnosis"), left_out))
        if "compare" in entry:
            c = entry["compare"]
            lines.append(_set_row(label, c["model"]["name"], c["metrics"], c.get("diagnosis"), left_out))
        if _is_isic2017(name):
            lines.append(_isic2017_row(label))
    if any(_is_isic2017(name) for name in sets):
        lines += ["", _ISIC2017_NOTE]
    return lines


def _isic2017_row(label: str) -> str:
    published = "; ".join(f"{auc:.3f} ({team})" for team, auc in ISIC2017_PUBLISHED_MELANOMA_AUC)
    return (f"| {label} | ISIC 2017 challenge, published melanoma AUC (best first) | full test split | – | {published} "
            "| – | – | – | – | – |")


def _diagnosis_head(result: dict, figure_dir: str) -> list[str]:
    names = result["model"].get("diagnoses") or []
    measured = {name: e for name, e in result.get("sets", {}).items() if "diagnosis" in e}
    if not names and not measured:
        return []
    lines = ["## Diagnosis head",
             f"Beside benign/malignant, the model gives a probability for each of {len(names)} diagnoses "
             f"({', '.join(names)}); its prediction is the most probable. Only images whose recorded diagnosis is one "
             "of these count. Balanced accuracy is the mean of the per-diagnosis recalls (the ISIC 2018 challenge "
             "metric); top-3 accuracy the share of images whose diagnosis is among the three most probable."]
    if not measured:
        return lines + ["", "No test set here records diagnoses the model knows, so the head is not measured on this card."]
    for name, entry in measured.items():
        lines += ["", f"### {name}" + (" (primary set)" if entry.get("primary") else "")] + diagnosis_section(entry, figure_dir)
    return lines


def diagnosis_section(entry: dict, figure_dir: str) -> list[str]:
    dx = entry["diagnosis"]
    lines = [f"- {dx['images']} of {entry['metrics']['n']} evaluated images counted "
             f"({dx['images_without_known_diagnosis']} have no diagnosis or one the model does not know).",
             f"- Balanced accuracy (mean recall over the {sum(1 for c in dx['per_class'].values() if c['support'])} "
             f"diagnoses present) {_ci(dx['balanced_accuracy'])}; top-3 accuracy {_ci(dx['top3_accuracy'])}; "
             f"accuracy {_ci(dx['accuracy'])}."]
    theirs = entry.get("compare", {}).get("diagnosis")
    if theirs:
        lines.append(f"- `{entry['compare']['model']['name']}` on the same images: balanced accuracy "
                     f"{_ci(theirs['balanced_accuracy'])}; top-3 accuracy {_ci(theirs['top3_accuracy'])}.")
    lines += ["", "| diagnosis | images | predicted | recall | precision |", "|---|---|---|---|---|"]
    for name, c in dx["per_class"].items():
        if c["support"] or c["predicted"]:
            lines.append(f"| {name} | {c['support']} | {c['predicted']} | {format_value(c['recall'])} | {format_value(c['precision'])} |")
    if dx.get("figure"):
        lines += ["", f"![diagnosis confusion matrix]({figure_dir}/{Path(dx['figure']).name})"]
    return lines


def _operating_points(result: dict, info: dict) -> list[str]:
    m, model = result["metrics"], result["model"]
    checks = info.get("checks", {})
    lines = [
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
                      f"{checks.get('screening_decision_agreement', float('nan')):.1%} of images; the export allowed an "
                      f"AUC drop of at most {checks.get('max_auc_drop', float('nan')):g}"
                      + (f"; the int8 diagnosis head names the float model's top diagnosis on "
                         f"{checks['diagnosis_top1_agreement']:.1%} of the pool (at least "
                         f"{checks.get('min_diagnosis_agreement', float('nan')):.0%} required)"
                         if "diagnosis_top1_agreement" in checks else "") + "."]
    return lines


def robustness_rows(rows: list[dict]) -> list[str]:
    """The robustness table in markdown (also used by the README): screening figures, and their change."""
    lines = ["| perturbation | ROC AUC (95% CI) | screening sensitivity | screening specificity (Δ) | decisions flipped | "
             "median \\|Δp\\| |", "|---|---|---|---|---|---|"]
    for r in rows:
        pt = r["operating_points"].get("screening") or next(iter(r["operating_points"].values()))
        lines.append(f"| {r['description']} | {_ci(r['roc_auc'])} | {pt['sensitivity']:.3f} | "
                     f"{pt['specificity']:.3f} ({pt['delta_specificity']:+.3f}) | "
                     f"{r['screening_flip_rate']:.1%} | {r['median_abs_delta']:.4f} |")
    return lines


def _robustness(result: dict) -> list[str]:
    if "robustness" not in result:
        return []
    lines = ["## Robustness", "The evaluation set again, each image changed one way before the model's own crop and "
             "resize. Flipped: the share of screening decisions that differ from those on the unchanged images.", ""]
    lines += robustness_rows(result["robustness"])
    if "robustness" in result.get("compare", {}):
        lines += ["", f"The same for `{result['compare']['model']['name']}`:", ""]
        lines += robustness_rows(result["compare"]["robustness"])
    return lines


def _gate(result: dict, info: dict) -> list[str]:
    from edgeskin.runtime.gate import QUALITY_TAIL

    gate = info.get("gate")
    if not gate:
        return []
    checks = gate.get("checks", {})
    lines = [
        "## Input gate",
        "Before its probability is trusted, every image is checked; one that fails is labelled `unusable` with its "
        "reasons (its probability is still reported). Quality: too small (short side under "
        f"{gate['min_short_side']:.0f} px), far from square (aspect over {gate['max_aspect']:.2f}), nearly uniform "
        f"(luma s.d. under {gate['min_contrast']:.2f}), overexposed or underexposed (over {gate['max_overexposed']:.3f} / "
        f"{gate['max_underexposed']:.3f} of pixels clipped), too blurred (Laplacian variance under {gate['min_sharpness']:.2f}); "
        f"each limit is the {QUALITY_TAIL:.1%} tail of the training images' own statistics (stored and re-encoded at "
        "JPEG q75), size and aspect half the smallest and twice the widest seen. " + _domain_sentence(gate, info),
    ]
    if checks:
        lines.append(f"- The quality checks' and pixel distance's pass rates where they were fitted ({checks.get('fitted', '')}): training images "
                     f"{checks['training_pass_rate']:.1%} of {checks['training_images']}, calibration pool "
                     f"{checks['calibration_pass_rate']:.1%} of {checks['calibration_images']}.")
    g = result.get("gate")
    if g:
        lines.append(f"- On this evaluation set: {g['set_aside']} of {g['images']} images set aside "
                     f"({g['share_set_aside']:.1%}: " + (", ".join(f"{k} {v}" for k, v in g["reasons"].items()) or "none") + ")"
                     + (f"; ROC AUC on the rest {_ci(g['usable_metrics']['roc_auc'])}, on all images "
                        f"{_ci(result['metrics']['roc_auc'])}." if g.get("usable_metrics") else "."))
    return lines


def _domain_sentence(gate: dict, info: dict) -> str:
    from edgeskin.runtime.gate import DOMAIN_PASS

    usable = info.get("usable")
    if not usable:
        return (f"Domain: the Mahalanobis distance of {len(gate['mean'])} colour and texture statistics from the "
                f"training images, over {gate['max_distance']:.2f} = {DOMAIN_PASS:.1%} of the calibration pool.")
    c = usable["checks"]
    by_quality = ", ".join(f"{q} {r:.1%}" for q, r in c.get("calibration_pass_rate_by_quality", {}).items())
    moved = (f"; the float fit's limit let {c['pass_rate_at_float_limit']:.1%} through the file, so the limit moved "
             f"{c['float_score_limit']:.3g} -> {c['score_limit']:.3g}" if "score_limit" in c
             and abs(c["score_limit"] - c["float_score_limit"]) > 1e-9 else "")
    return ("Domain: the model's own third output, `usable` (`[usable, out_of_domain]`), from what the network sees "
            "(block 6's activation off its training subspace, and a distance in the pooled features' whitened "
            f"subspace), fitted {c.get('fitted', '')}; out_of_domain at or over {usable['threshold']:.2f} sets the "
            f"image aside. The file itself lets {c['calibration_pass_rate']:.1%} of the calibration pool's "
            f"{c['calibration_images']} images through ({by_quality}){moved}; its out_of_domain output reaches "
            f"{c['out_of_domain_ceiling']:.3f} at most.")


def _figures(result: dict, figure_dir: str) -> list[str]:
    shown = {e["diagnosis"]["figure"] for e in result.get("sets", {}).values() if "figure" in e.get("diagnosis", {})}
    lines = ["## Figures", ""]
    for f in (f for f in result["metrics"].get("figures", []) if f not in shown):
        name = Path(f).stem.replace("_", " ")
        lines.append(f"![{name}]({figure_dir}/{Path(f).name})")
    return lines
