"""Folder evaluation (src/eval_folder.py): tiny hand-made NIfTI label maps with known Dice."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from conftest import compose_cfg
from scdl.evaluation.folder import class_names_from, evaluate_folder, evaluate_folder_from_config

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _save(path, labels, affine=AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), path)


@pytest.fixture
def folders(tmp_path):
    """Two cases, C = 3. case_a: class 1 Dice 2*4/(8+4) = 2/3, class 2 perfect; case_b: class 1
    perfect, class 2 in neither map (excluded in the standard protocol)."""
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    a_ref = np.zeros((6, 5, 4), np.uint8)
    a_ref[0:2, 0:2, 0:2] = 1
    a_ref[4:6, 3:5, 2:4] = 2
    a_pred = a_ref.copy()
    a_pred[1, 0:2, 0:2] = 0
    b_ref = np.zeros((6, 5, 4), np.uint8)
    b_ref[2:5, 1:4, 1:3] = 1
    _save(ref / "case_a.nii.gz", a_ref)
    _save(pred / "case_a.nii.gz", a_pred)
    _save(ref / "case_b.nii", b_ref)  # .nii and .nii.gz of one case still match
    _save(pred / "case_b.nii.gz", b_ref)
    (pred / "notes.txt").write_text("not a label map")
    return pred, ref


def test_folder_scores_known_dice_and_writes_the_schema(folders, tmp_path, capsys):
    pred, ref = folders
    out = tmp_path / "out"
    s = evaluate_folder(pred, ref, ["background", "liver", "kidney"], output_dir=out)
    assert s["protocol"] == "standard" and s["classes"] == ["liver", "kidney"]
    assert [c["case"] for c in s["per_case"]] == ["case_a", "case_b"]
    a, b = (c["values"] for c in s["per_case"])
    assert a["liver"]["dice"] == pytest.approx(2 / 3) and a["kidney"]["dice"] == 1.0
    assert b["liver"]["dice"] == 1.0 and b["kidney"]["dice"] is None  # both empty: excluded
    assert s["per_class"]["liver"]["dice"]["mean"] == pytest.approx(5 / 6)
    assert s["per_class"]["kidney"]["dice"] == {"mean": 1.0, "std": 0.0, "n": 1}
    # distances in mm from the header: removing one x-layer of a 2-voxel cube moves its face 1.5
    assert a["liver"]["hd95"] == pytest.approx(1.5) and a["kidney"]["asd"] == 0.0
    assert json.loads((out / "metrics.json").read_text())["per_case"] == s["per_case"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["class"] for r in rows] == ["liver", "kidney", "mean"]
    assert len(list(csv.DictReader((out / "metrics_per_case.csv").open()))) == 4
    assert "liver" in capsys.readouterr().out
    paper = evaluate_folder(pred, ref, ["bg", "liver", "kidney"], "paper", print_table=False)
    assert paper["per_case"][1]["values"]["kidney"]["dice"] == 1.0  # paper: both empty = 1


def test_folder_errors_name_the_file(folders, tmp_path):
    pred, ref = folders
    names = ["bg", "a", "b"]
    _save(pred / "case_c.nii.gz", np.zeros((6, 5, 4)))
    with pytest.raises(ValueError, match="without a reference.*case_c"):
        evaluate_folder(pred, ref, names, print_table=False)
    (pred / "case_c.nii.gz").unlink()
    _save(ref / "case_d.nii.gz", np.zeros((6, 5, 4)))
    with pytest.raises(ValueError, match="without a prediction.*case_d"):
        evaluate_folder(pred, ref, names, print_table=False)
    s = evaluate_folder(pred, ref, names, allow_missing=True, print_table=False)
    assert s["num_cases"] == 2
    (ref / "case_d.nii.gz").unlink()
    _save(pred / "case_b.nii.gz", np.zeros((6, 5, 3)))
    with pytest.raises(ValueError, match=r"case_b.nii.gz: shape \(6, 5, 3\) differs"):
        evaluate_folder(pred, ref, names, print_table=False)
    _save(pred / "case_b.nii.gz", np.zeros((6, 5, 4)), affine=np.diag([1.0, 1.5, 2.0, 1.0]))
    with pytest.raises(ValueError, match="case_b.nii.gz: affine differs"):
        evaluate_folder(pred, ref, names, print_table=False)
    _save(pred / "case_b.nii.gz", np.full((6, 5, 4), 5))
    with pytest.raises(ValueError, match="case_b.nii.gz: label 5 but only 3 classes"):
        evaluate_folder(pred, ref, names, print_table=False)


def test_class_names_from_dataset_json_and_the_entry_config(folders, tmp_path):
    pred, ref = folders
    v2 = tmp_path / "dataset.json"
    v2.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "kidney": 2}}))
    assert class_names_from(dataset_json=v2) == ["background", "liver", "kidney"]
    v1 = tmp_path / "msd.json"
    v1.write_text(json.dumps({"labels": {"0": "background", "1": "liver", "2": "kidney"}}))
    assert class_names_from(dataset_json=v1) == ["background", "liver", "kidney"]
    assert class_names_from(num_classes=3) == ["background", "class_1", "class_2"]
    cfg = compose_cfg(
        [f"pred_dir={pred}", f"ref_dir={ref}", f"dataset_json={v2}", "progress=false"],
        config_name="eval_folder",
    )
    s = evaluate_folder_from_config(cfg)
    assert s["classes"] == ["liver", "kidney"]
    assert s["overall"]["dice"]["mean"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert s["files"]["json"] == str(pred / "eval_standard" / "metrics.json")
    # no names at all: classes from the largest label found
    assert evaluate_folder(pred, ref, print_table=False)["classes"] == ["class_1", "class_2"]
