"""The edgeskin web app (Streamlit): upload, probability, threshold, Grad-CAM.

Run it with `edgeskin app`. Uploaded images are decoded in memory and never
written to disk. The app scores with the same TFLite runtime as `predict`;
Grad-CAM needs the float Keras model and TensorFlow, and is offered only
when both are available.

Decision levels, from the slider's threshold t and the model's `specific`
operating point s:
  benign              p < t
  uncertain (refer)   t <= p < max(t, s)
  suspicious          p >= max(t, s)
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np

MAX_UPLOAD_MB = 10
DISCLAIMER = ("**Not a diagnosis.** edgeskin is a screening aid for dermoscopic images. It can miss melanoma and "
              "it raises false alarms. Any lesion that is new, changing, bleeding or worrying must be seen by a doctor, "
              "whatever this page says.")


def decide(p: float, threshold: float, suspicious_at: float) -> str:
    """Three-level decision; see the module docstring."""
    if p < threshold:
        return "benign"
    if p < max(threshold, suspicious_at):
        return "uncertain (refer)"
    return "suspicious"


def model_paths(argv) -> tuple[Path, Path | None, Path]:
    """The .tflite, the optional .keras and the folder with the model card, from the command line."""
    from edgeskin.runtime import default_model

    args = list(argv)

    def option(flag, env):
        return args[args.index(flag) + 1] if flag in args else os.environ.get(env)

    tflite = Path(option("--model", "EDGESKIN_MODEL") or default_model())
    keras_path = Path(option("--keras", "EDGESKIN_KERAS") or tflite.with_name("edgeskin.keras"))
    return tflite, keras_path if keras_path.is_file() else None, tflite.parent


def read_upload(name: str, raw: bytes, size: int, with_size: bool = False):
    """Pixels of an uploaded file (and, with_size, its original (width, height)), or an error message.

    Nothing touches the disk.
    """
    from edgeskin.runtime.imageio import ImageError, open_rgb, to_model_input

    if len(raw) > MAX_UPLOAD_MB * 1024 * 1024:
        return None, f"{name}: larger than {MAX_UPLOAD_MB} MB"
    try:
        im = open_rgb(io.BytesIO(raw))
        pixels = to_model_input(im, size)
        return ((pixels, im.size) if with_size else pixels), None
    except ImageError as exc:
        return None, f"{name}: not a readable JPG or PNG image ({str(exc).split(': ', 1)[-1]})"


def cannot_judge(reasons) -> str:
    """The message shown in place of a risk level when the gate sets an image aside."""
    from edgeskin.runtime.gate import REASON_TEXT

    return "Cannot judge this photo: " + "; ".join(REASON_TEXT.get(r, r) for r in reasons) + ". Retake it."


def main() -> None:  # pragma: no cover - exercised through Streamlit's AppTest
    import streamlit as st

    st.set_page_config(page_title="edgeskin", layout="wide")
    tflite, keras_path, model_dir = model_paths(sys.argv[1:])
    clf = _classifier(st, str(tflite))
    page = st.sidebar.radio("Page", ["Screen", "Model"])
    st.sidebar.warning(DISCLAIMER)
    if page == "Model":
        _model_page(st, model_dir)
    else:
        _screen_page(st, clf, keras_path)


def _classifier(st, path: str):
    @st.cache_resource
    def load(p: str):
        from edgeskin.runtime import Classifier

        return Classifier(p)

    return load(path)


def _keras_model(st, path: str):
    @st.cache_resource
    def load(p: str):
        try:
            from edgeskin.training import model as model_lib

            return model_lib.load(p)
        except Exception:  # no TensorFlow in this environment: no Grad-CAM
            return None

    return load(path)


def _model_page(st, model_dir: Path) -> None:
    """The shipped model's headline figures, operating points, figures and card."""
    st.title("The model")
    card = model_dir / "MODEL_CARD.md"
    metrics_file = model_dir / "metrics.json"
    if metrics_file.is_file():
        m = json.loads(metrics_file.read_text())["metrics"]
        cols = st.columns(4)
        cols[0].metric("ROC AUC", f"{m['roc_auc']['value']:.3f}")
        cols[1].metric("PR AUC", f"{m['pr_auc']['value']:.3f}")
        cols[2].metric("Brier", f"{m['brier']['value']:.3f}")
        cols[3].metric("ECE", f"{m['ece']['value']:.3f}")
        st.table([{"operating point": k, "threshold": round(v["threshold"], 4),
                   "sensitivity": round(v["sensitivity"]["value"], 3), "specificity": round(v["specificity"]["value"], 3)}
                  for k, v in m["thresholds"].items()])
        for f in m.get("figures", []):
            st.image(str(model_dir / f), caption=Path(f).stem.replace("_", " "))
    if card.is_file():
        with st.expander("Model card", expanded=not metrics_file.is_file()):
            st.markdown(card.read_text().split("## Figures")[0])
    if not card.is_file() and not metrics_file.is_file():
        st.info("No model card beside this model.")


def _threshold_controls(st, points: dict) -> float:
    """Operating-point presets and a slider; the slider's value is the threshold."""
    if "threshold" not in st.session_state:
        st.session_state.threshold = float(points.get("screening", 0.5))
    known = ("screening", "balanced", "specific")
    names = [n for n in known if n in points] + [n for n in points if n not in known]
    preset = st.radio("Operating point", names + ["custom"], horizontal=True, index=0)
    if preset != "custom" and st.session_state.get("last_preset") != preset:
        st.session_state.threshold = float(points[preset])
    st.session_state.last_preset = preset
    return st.slider("Threshold on malignant_probability", 0.0, 1.0, key="threshold", step=1 / 256, format="%.3f")


def _screen_page(st, clf, keras_path) -> None:
    st.title("edgeskin: dermoscopy screening aid")
    st.error(DISCLAIMER)
    points = clf.operating_points
    threshold = _threshold_controls(st, points)
    suspicious_at = points.get("specific", threshold)
    uploads = st.file_uploader(f"Dermoscopic images (JPG or PNG, up to {MAX_UPLOAD_MB} MB each)",
                               type=["jpg", "jpeg", "png"], accept_multiple_files=True)
    net = _keras_model(st, str(keras_path)) if keras_path else None
    show_cam = st.toggle("Grad-CAM overlay", value=net is not None, disabled=net is None,
                         help=None if net is not None else "Needs the float Keras model and TensorFlow.")
    opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05, disabled=not show_cam)
    rows = [_one_upload(st, clf, upload, threshold, suspicious_at, net if show_cam else None, opacity)
            for upload in uploads or []]
    if len(rows) > 1:
        import pandas as pd

        table = pd.DataFrame(rows)
        st.dataframe(table, hide_index=True)
        st.download_button("Download results (CSV)", table.to_csv(index=False).encode(), "edgeskin_results.csv", "text/csv")


DX_NAMES = {"akiec": "actinic keratosis / intraepithelial carcinoma", "bcc": "basal cell carcinoma",
            "bkl": "benign keratosis-like lesion", "df": "dermatofibroma", "mel": "melanoma",
            "nv": "melanocytic naevus", "vasc": "vascular lesion"}


def diagnosis_line(top) -> str:
    """The top diagnoses as one line under the decision, which they never override."""
    items = ", ".join(f"{DX_NAMES.get(dx, dx)} ({dx}) {p:.0%}" for dx, p in top)
    return f"Most likely diagnoses (an aid, not the decision): {items}"


def _one_upload(st, clf, upload, threshold: float, suspicious_at: float, net, opacity: float) -> dict:
    """Show one image's decision (and Grad-CAM when net is given); return its table row."""
    decoded, error = read_upload(upload.name, upload.getvalue(), clf.image_size, with_size=True)
    if error:
        st.error(error)
        return {"file": upload.name, "malignant_probability": None, "decision": "error: " + error}
    pixels, size = decoded
    p, dx = clf.scores(pixels)
    reasons = clf.reasons(size, pixels)
    if reasons:
        st.warning(f"`{upload.name}`: {cannot_judge(reasons)}")
        st.image(pixels, caption=upload.name, width=300)
        return {"file": upload.name, "malignant_probability": round(p, 4), "decision": "unusable: " + ", ".join(reasons)}
    decision = decide(p, threshold, suspicious_at)
    colour = {"benign": "green", "uncertain (refer)": "orange", "suspicious": "red"}[decision]
    st.markdown(f"### :{colour}[{decision}]")
    st.markdown(f"`{upload.name}`: malignant_probability **{p:.3f}** at threshold {threshold:.3f}")
    if dx is not None:
        st.markdown(diagnosis_line(clf.top_diagnoses(dx)))
    left, right = st.columns(2)
    left.image(pixels, caption=upload.name, width="stretch")
    if net is not None:
        from edgeskin.training import explain

        heat, _ = explain.gradcam(net, pixels)
        right.image(explain.overlay(pixels, heat, opacity), caption="Grad-CAM: regions that raised the score",
                    width="stretch")
    return {"file": upload.name, "malignant_probability": round(p, 4), "decision": decision}


if __name__ == "__main__":
    main()
