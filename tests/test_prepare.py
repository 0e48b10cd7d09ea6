import json
import os

import nibabel as nib
import numpy as np
import pytest

from scdl.data.cache import load_cached_case, read_index
from scdl.data.layouts import read_nnunet_raw
from scdl.data.phantom import LABEL
from scdl.data.prepare import PreprocessProtocol, case_is_cached, prepare_dataset


def test_cache_has_target_spacing_ras_orientation_and_aligned_labels(phantom_raw, phantom_cache):
    case = load_cached_case(phantom_cache, "phantom_000")
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    assert case.image.shape == case.label.shape
    np.testing.assert_allclose(case.meta["spacing"], [1.5, 1.5, 2.0], atol=1e-4)
    assert nib.aff2axcodes(np.asarray(case.meta["affine"])) == ("R", "A", "S")
    # 144 x 144 x 128 mm field of view -> about 96 x 96 x 64 voxels
    assert all(abs(s - e) <= 2 for s, e in zip(case.image.shape, (96, 96, 64), strict=True))
    assert 0.0 <= case.image.min() and case.image.max() <= 1.0  # [-125, 275] HU window
    assert set(np.unique(case.label)) <= set(range(14))
    # RAS: index i grows towards the patient's right, j towards anterior; the liver is on the right,
    # the spleen on the left, the aorta posterior of the stomach
    com = {
        n: np.argwhere(case.label == LABEL[n]).mean(0)
        for n in ("liver", "spleen", "stomach", "aorta")
    }
    assert com["liver"][0] > com["spleen"][0]
    assert com["stomach"][1] > com["aorta"][1]
    # labels land where the original NIfTI had them: compare organ volumes in mm^3
    raw_lab = nib.load(phantom_raw / "labelsTr" / "phantom_000.nii.gz")
    raw_vox = float(np.prod(raw_lab.header.get_zooms()))
    raw_liver = (np.asarray(raw_lab.dataobj) == LABEL["liver"]).sum() * raw_vox
    new_liver = (case.label == LABEL["liver"]).sum() * 1.5 * 1.5 * 2.0
    assert abs(new_liver - raw_liver) / raw_liver < 0.03


def test_prepare_is_idempotent_and_recovers_from_interruption(phantom_raw, tmp_path):
    raw = read_nnunet_raw(phantom_raw)
    ids = [c.case_id for c in raw.cases[:2]]
    protocol = PreprocessProtocol(name="t", spacing=(3.0, 3.0, 4.0))
    cache = prepare_dataset(raw, protocol, tmp_path, progress=False, case_ids=ids)
    stamp = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    prepare_dataset(raw, protocol, tmp_path, progress=False, case_ids=ids)
    assert stamp == {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}  # nothing redone

    # an interrupted run: arrays written, meta (the completion marker) not -> the case is redone
    os.remove(cache / f"{ids[0]}.json")
    (cache / f"{ids[0]}_image.npy").write_bytes(b"garbage")
    assert not case_is_cached(cache, ids[0], protocol.hash)
    prepare_dataset(raw, protocol, tmp_path, progress=False, case_ids=ids)
    assert case_is_cached(cache, ids[0], protocol.hash)
    assert load_cached_case(cache, ids[0]).image.ndim == 3

    # another protocol invalidates the cached cases
    other = PreprocessProtocol(name="t", spacing=(3.0, 3.0, 3.0))
    assert not case_is_cached(cache, ids[1], other.hash)
    index = read_index(cache)
    assert index["protocol_hash"] == protocol.hash and [c["case_id"] for c in index["cases"]] == ids


def test_zscore_protocol_and_bad_config(phantom_raw, tmp_path):
    raw = read_nnunet_raw(phantom_raw)
    protocol = PreprocessProtocol(name="z", spacing=(3.0, 3.0, 4.0), normalisation="zscore")
    prepare_dataset(raw, protocol, tmp_path, progress=False, case_ids=["phantom_001"])
    image = load_cached_case(tmp_path, "phantom_001").image
    assert abs(image.mean()) < 1e-3 and abs(image.std() - 1) < 1e-2
    meta = json.loads((tmp_path / "phantom_001.json").read_text())
    assert meta["protocol_hash"] == protocol.hash
    with pytest.raises(ValueError, match="clip"):
        PreprocessProtocol(clip=None, normalisation="window")


def test_parallel_preparation_writes_the_serial_cache_byte_for_byte(tmp_path, monkeypatch):
    """data.prepare_workers: cases checked and preprocessed in worker processes give the same
    files as the serial pass; a failing case is named (issue 24 item 10)."""
    import filecmp

    from real_data_fixtures import write_nnunet
    from scdl.data.errors import DataCheckError
    from scdl.data.layouts import read_nnunet_raw
    from scdl.data.prepare import PreprocessProtocol, prepare_dataset

    monkeypatch.setattr("scdl.utils.parallel.MIN_PARALLEL_BYTES", 0)  # a pool for tiny cases too
    raw = read_nnunet_raw(write_nnunet(tmp_path, num_cases=4, num_test=1, shape=(20, 18, 12)))
    protocol = PreprocessProtocol()
    serial = prepare_dataset(raw, protocol, tmp_path / "serial", progress=False, workers=1)
    parallel = prepare_dataset(raw, protocol, tmp_path / "parallel", progress=False, workers=2)
    names = sorted(p.name for p in serial.iterdir())
    assert names == sorted(p.name for p in parallel.iterdir()) and len(names) == 15
    for name in names:
        if name.endswith(".npy"):
            assert filecmp.cmp(serial / name, parallel / name, shallow=False), name
    # a case that fails in a worker is named with its file
    bad = raw.cases[2]
    bad.image.write_bytes(bad.image.read_bytes()[:200])
    with pytest.raises(DataCheckError, match=f"{bad.case_id}: {bad.image}"):
        prepare_dataset(raw, protocol, tmp_path / "broken", progress=False, workers=2)
