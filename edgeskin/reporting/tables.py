"""The plain-text tables `edgeskin evaluate` prints, from the result that metrics.json holds."""

from __future__ import annotations

from edgeskin.reporting.card_results import format_value


def _ci_text(entry, fmt="{:.3f}") -> str:
    lo, hi = entry["ci95"]
    return f"{format_value(entry['value'], fmt)} [{format_value(lo, fmt)}, {format_value(hi, fmt)}]"


def left_out_text(d: dict) -> str:
    """What was left out of a set and against what; says so when the model's own training images were not checked."""
    own = "this set's own train/val images" if d.get("split") == "test" else None
    if d.get("training_images_checked", True):  # older metrics.json files predate the field
        return f"{d['near_duplicates_left_out']} near-duplicates of training images left out"
    if own:
        return (f"{d['near_duplicates_left_out']} near-duplicates of {own} left out; not checked against the model's "
                "own training images (no run record: give --run)")
    return "not checked for near-duplicates of the model's training images (no run record: give --run)"


def table(result: dict) -> str:
    """The headline figures as a plain-text table."""
    m = result["metrics"]
    ci = _ci_text
    d = result["data"]
    lines = [f"{result['model']['name']} on {d['evaluated']} images ({m['n_malignant']} malignant, {m['n_benign']} benign; "
             f"{left_out_text(d)})",
             f"  ROC AUC          {ci(m['roc_auc'])}",
             f"  PR AUC           {ci(m['pr_auc'])}",
             f"  Brier            {ci(m['brier'])}",
             f"  ECE (15 bins)    {ci(m['ece'])}" + (f"   before temperature: {ci(m['ece_before_temperature'])}"
                                                     if "ece_before_temperature" in m else "")
             + (f"   before Platt: {ci(m['ece_before_platt'])}" if "ece_before_platt" in m else "")]
    for t, v in m["specificity_at_sensitivity"].items():
        lines.append(f"  specificity at sensitivity {t}: {ci(v)}")
    lines.append(f"  {'point':<11}{'threshold':>9}  {'sensitivity':<22}{'specificity':<22}{'PPV':<22}{'NPV':<22}")
    for name, pt in m["thresholds"].items():
        lines.append(f"  {name:<11}{pt['threshold']:>9.4f}  {ci(pt['sensitivity']):<22}{ci(pt['specificity']):<22}"
                     f"{ci(pt['ppv']):<22}{ci(pt['npv']):<22}")
    if "compare" in result:
        c = result["compare"]["metrics"]
        lines.append(f"compare {result['compare']['model']['name']}: ROC AUC {ci(c['roc_auc'])}, PR AUC {ci(c['pr_auc'])}")
    if "gate" in result:
        g = result["gate"]
        usable = g.get("usable_metrics")
        lines.append(f"  gate: {g['set_aside']} of {g['images']} images set aside ({g['share_set_aside']:.1%}; "
                     + (", ".join(f"{k} {v}" for k, v in g["reasons"].items()) or "none") + ")"
                     + (f"; ROC AUC on the rest {ci(usable['roc_auc'])}" if usable else ""))
    if "robustness" in result:
        lines.append(robustness_table(result["robustness"]))
    lines += diagnosis_lines(result)
    if len(result.get("sets", {})) > 1:
        lines += sets_table(result)
    return "\n".join(lines)


def screening_point(thresholds: dict) -> tuple[str, dict]:
    """The screening operating point, or the first one a model without it has."""
    from edgeskin.runtime.calibration import DEFAULT_OPERATING_POINT

    name = DEFAULT_OPERATING_POINT if DEFAULT_OPERATING_POINT in thresholds else next(iter(thresholds))
    return name, thresholds[name]


def diagnosis_lines(result: dict) -> list[str]:
    """The diagnosis head's figures on every set that has them, the primary set first."""
    lines = []
    for name, entry in result.get("sets", {}).items():
        dx = entry.get("diagnosis")
        if not dx:
            continue
        lines += [f"  diagnosis head on {name}: {dx['images']} of {entry['metrics']['n']} images have one of its "
                  f"{len(dx['diagnoses'])} diagnoses",
                  f"    balanced accuracy {_ci_text(dx['balanced_accuracy'])}   top-3 accuracy {_ci_text(dx['top3_accuracy'])}"]
        cdx = entry.get("compare", {}).get("diagnosis")
        if cdx:
            lines.append(f"    {entry['compare']['model']['name']}: balanced accuracy {_ci_text(cdx['balanced_accuracy'])}"
                         f"   top-3 accuracy {_ci_text(cdx['top3_accuracy'])}")
        for dname, c in dx["per_class"].items():
            if c["support"] or c["predicted"]:
                lines.append(f"    {dname:<6} n={c['support']:<6} recall {format_value(c['recall'])}   precision {format_value(c['precision'])}")
    return lines


def sets_table(result: dict) -> list[str]:
    """One row a test set (and one for the compared model under it)."""
    lines = [f"  {'by test set':<20}{'images':>7}  {'ROC AUC':<22}{'screen sens':>11}{'spec':>7}{'ECE':>7}"
             f"{'dx bal.acc':>11}{'top-3':>7}"]

    def row(label, m, dx):
        _, pt = screening_point(m["thresholds"])
        balanced, top3 = (format_value(dx["balanced_accuracy"]["value"]), format_value(dx["top3_accuracy"]["value"])) if dx else ("", "")
        return (f"  {label:<20}{m['n']:>7}  {_ci_text(m['roc_auc']):<22}{format_value(pt['sensitivity']['value']):>11}"
                f"{format_value(pt['specificity']['value']):>7}{format_value(m['ece']['value']):>7}{balanced:>11}{top3:>7}")

    for name, entry in result["sets"].items():
        lines.append(row(name, entry["metrics"], entry.get("diagnosis")))
        if "compare" in entry:
            c = entry["compare"]
            lines.append(row(f"  {c['model']['name']}"[:20], c["metrics"], c.get("diagnosis")))
    return lines


def robustness_table(rows: list[dict]) -> str:
    lines = [f"  robustness {'':<12}{'ROC AUC':>8}  {'screening sens':>14}  {'spec':>6}  {'flipped':>8}  {'median |dp|':>11}"]
    for r in rows:
        pt = r["operating_points"].get("screening") or next(iter(r["operating_points"].values()))
        lines.append(f"  {r['name']:<23}{r['roc_auc']['value']:>8.3f}  {pt['sensitivity']:>14.3f}  {pt['specificity']:>6.3f}  "
                     f"{r['screening_flip_rate']:>8.1%}  {r['median_abs_delta']:>11.4f}")
    return "\n".join(lines)
