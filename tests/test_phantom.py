import json

import nibabel as nib
import numpy as np

from scdl.data.labels import SYNAPSE_CLASSES
from scdl.data.phantom import LABEL, TISSUE_HU, phantom_case


def test_phantom_is_deterministic_per_seed():
    a_img, a_lab, a_aff = phantom_case(seed=3, case_index=1)
    b_img, b_lab, b_aff = phantom_case(seed=3, case_index=1)
    c_img, c_lab, _ = phantom_case(seed=4, case_index=1)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    np.testing.assert_array_equal(a_aff, b_aff)
    assert not np.array_equal(a_lab, c_lab)  # another seed -> another anatomy
    assert a_img.dtype == np.int16 and a_lab.dtype == np.uint8


def test_phantom_has_all_organs_with_realistic_imbalance():
    ratios_r, ratios_l = [], []
    for i in range(3):
        _, label, _ = phantom_case(seed=0, case_index=i)
        counts = np.bincount(label.ravel(), minlength=len(SYNAPSE_CLASSES))
        assert (counts[1:] > 0).all(), f"case {i}: missing organs {np.flatnonzero(counts == 0)}"
        ratios_r.append(counts[LABEL["liver"]] / counts[LABEL["right_adrenal_gland"]])
        ratios_l.append(counts[LABEL["liver"]] / counts[LABEL["left_adrenal_gland"]])
        # the four smallest classes are the adrenals, the veins and the gallbladder/esophagus group
        smallest = set(np.argsort(counts[1:])[:4] + 1)
        assert {LABEL["right_adrenal_gland"], LABEL["left_adrenal_gland"]} <= smallest
        assert counts[LABEL["liver"]] == counts[1:].max()
    assert np.mean(ratios_r) >= 300 and np.mean(ratios_l) >= 300


def test_phantom_soft_tissue_intensities_overlap():
    image, label, _ = phantom_case(seed=0, case_index=0)
    means = {n: image[label == LABEL[n]].mean() for n in ("liver", "spleen", "pancreas")}
    stds = {n: image[label == LABEL[n]].std() for n in means}
    # liver, spleen and pancreas are within one noise std of each other: no threshold separates them
    assert max(means.values()) - min(means.values()) < max(stds.values()) * 1.5
    assert min(stds.values()) > 8  # noisy
    assert TISSUE_HU["bone"][0] > 300 and image.min() <= -1000  # air outside the body


def test_written_nifti_layout(phantom_raw):
    meta = json.loads((phantom_raw / "dataset.json").read_text())
    assert meta["labels"]["background"] == 0 and meta["labels"]["left_adrenal_gland"] == 13
    assert meta["channel_names"] == {"0": "CT"}
    img = nib.load(phantom_raw / "imagesTr" / "phantom_000_0000.nii.gz")
    lab = nib.load(phantom_raw / "labelsTr" / "phantom_000.nii.gz")
    assert img.shape == lab.shape
    np.testing.assert_allclose(img.affine, lab.affine)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    sx, sy, sz = img.header.get_zooms()
    assert 0.85 < sx == sy < 1.3 and sz in (2.0, 2.5, 3.0)
    assert np.asarray(lab.dataobj).dtype == np.uint8
