"""The shortcut audit: it must find a planted cue, and find nothing where there is none."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeskin.data import audit, sets
from edgeskin.cli import main
from conftest import lesion

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic-binary"


def _label_blind_set(root: Path, n: int = 60, plant: bool = False) -> list[sets.Sample]:
    """Pictures drawn from one distribution whatever their label; with plant,
    the malignant ones alone are saved at quality 60 with 4:2:0 chroma."""
    rng = np.random.default_rng(7)
    samples = []
    for k, name in enumerate(sets.LABELS):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            im = lesion(rng, bool(rng.random() < 0.5), size=96)
            path = root / name / f"{i}.jpg"
            if plant and k == 1:
                im.save(path, quality=60, subsampling=2)
            else:
                im.save(path, quality=95, subsampling=0)
            samples.append(sets.Sample(str(path), k))
    return samples


def _flags(report):
    return {row["property"] for row in report["properties"] if row["flagged"]}


def test_audit_flags_a_planted_compression_shortcut(tmp_path):
    report = audit.audit(_label_blind_set(tmp_path / "planted", plant=True), n_boot=200)
    flags = _flags(report)
    assert {"jpeg_quality", "chroma_subsampling"} <= flags
    row = {r["property"]: r for r in report["properties"]}["jpeg_quality"]
    assert row["auc"] == pytest.approx(1.0) and row["direction"] == "lower means malignant"
    assert row["per_class"]["malignant"]["median"] == pytest.approx(60, abs=1)


def test_audit_flags_nothing_without_the_plant(tmp_path):
    report = audit.audit(_label_blind_set(tmp_path / "clean"), n_boot=200)
    assert _flags(report) == set(), audit.table(report)


def test_audit_writes_its_report_and_figure(tmp_path):
    samples = _label_blind_set(tmp_path / "planted", n=20, plant=True)
    report = audit.audit(samples, tmp_path / "out", n_boot=100)
    saved = json.loads((tmp_path / "out" / audit.AUDIT_FILE).read_text())
    assert saved["properties"] == json.loads(json.dumps(report["properties"]))
    assert len((tmp_path / "out" / audit.PROPERTIES_FILE).read_text().splitlines()) == len(samples) + 1
    assert (tmp_path / "out" / audit.FIGURE_FILE).stat().st_size > 10_000


def test_jpeg_quality_estimate_and_lossless(tmp_path):
    im = lesion(np.random.default_rng(0), False, size=64)
    for q in (30, 50, 75, 90, 100):
        im.save(tmp_path / f"{q}.jpg", quality=q)
        assert audit.properties_of(tmp_path / f"{q}.jpg")["jpeg_quality"] == pytest.approx(q, abs=1)
    im.save(tmp_path / "x.png")
    props = audit.properties_of(tmp_path / "x.png")
    assert props["jpeg_quality"] == 101 and props["chroma_subsampling"] == "none" and props["format"] == "PNG"


def test_audit_command(tmp_path):
    _label_blind_set(tmp_path / "set" / "train", n=15, plant=True)
    out = tmp_path / "report"
    r = CliRunner().invoke(main, ["audit", str(tmp_path / "set"), "--out", str(out), "--bootstrap", "100"])
    assert r.exit_code == 0, r.output
    assert "! jpeg_quality" in r.output and (out / audit.AUDIT_FILE).is_file()
    r = CliRunner().invoke(main, ["audit", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_audit_reports_an_unreadable_file_in_one_line(tmp_path):
    _label_blind_set(tmp_path / "set", n=5)
    (tmp_path / "set" / "benign" / "bad.jpg").write_bytes(b"not a jpeg")
    r = CliRunner().invoke(main, ["audit", str(tmp_path / "set"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and "bad.jpg" in r.output and "Traceback" not in r.output


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/isic-binary is not beside the project")
def test_audit_flags_compression_on_isic_binary_train():
    ds = sets.discover(SHARED)
    report = audit.audit(ds.train, n_boot=200)
    assert {"jpeg_quality", "chroma_subsampling"} <= _flags(report)


def test_a_mixture_audits_its_sources_and_each_source_alone(tmp_path):
    """Two sources with different prevalence: the source itself is flagged, and each source is audited alone."""
    from conftest import write_class_folders

    from edgeskin.data import audit as audit_lib
    from edgeskin.data import sets as data_lib

    a = write_class_folders(tmp_path / "a", 40, seed=1)
    b = tmp_path / "b"
    write_class_folders(b, 40, seed=2)
    for p in list((b / "malignant").glob("*.jpg"))[:32]:
        p.unlink()  # source b: 40 benign, 8 malignant
    ds = data_lib.discover_many([a, b])
    report = audit_lib.audit(ds.train, n_boot=200)
    source = next(r for r in report["properties"] if r["property"] == "source")
    assert source["auc"] > 0.6
    assert set(report["by_source"]) == {"a", "b"}
    assert report["by_source"]["b"]["malignant"] == 8
    assert "within a" in audit_lib.table(report)


def test_the_table_never_cuts_a_name_and_explains_a_flag_beside_equal_medians():
    zero = {"median": 0.0, "p25": 0.0, "p75": 0.0}
    report = {"images": 40, "counts": {"benign": 20, "malignant": 20}, "flag_rule": "rule", "near_duplicates": {},
              "properties": [
                  {"property": "dark_border", "kind": "numeric", "flagged": True, "auc": 0.61, "ci95": [0.58, 0.64],
                   "per_class": {"benign": {**zero, "share_nonzero": 0.05}, "malignant": {**zero, "share_nonzero": 0.3}}},
                  {"property": "source", "kind": "categorical", "flagged": True, "auc": 0.7, "ci95": [0.6, 0.8],
                   "per_class": {"benign": {"isic-binary": 1217, "ham10000": 5703, "isic2017": 1487},
                                 "malignant": {"isic-binary": 937, "ham10000": 1305, "isic2017": 310}}}]}
    text = audit.table(report)
    assert "median 0, 5% non-zero" in text and "median 0, 30% non-zero" in text
    assert "share a median, the AUC comes from the rest of the distribution" in text
    words = set(text.replace(",", " ").split())
    assert "isic-binary" in words and not any(w.startswith("isic-bin") and w != "isic-binary" for w in words)
    assert "isic-binary 1217, +2 more" in text
