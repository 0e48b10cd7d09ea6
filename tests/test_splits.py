import json

import pytest

from scdl.data.splits import Split, SplitError, load_split_file, make_split

IDS = [f"c{i:02d}" for i in range(30)]


def test_drawn_split_is_disjoint_complete_and_deterministic():
    a = make_split(IDS, labeled_ratio=0.2, num_val=4, num_test=6, seed=1)
    b = make_split(list(reversed(IDS)), labeled_ratio=0.2, num_val=4, num_test=6, seed=1)
    assert a == b  # independent of input order
    assert (len(a.labeled), len(a.unlabeled), len(a.val), len(a.test)) == (4, 16, 4, 6)
    parts = [set(a.labeled), set(a.unlabeled), set(a.val), set(a.test)]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 30
    assert make_split(IDS, labeled_ratio=0.2, num_val=4, num_test=6, seed=2) != a
    assert len(make_split(IDS, num_labeled=2, num_val=4, num_test=6).labeled) == 2


def test_unlabeled_only_cases_join_the_unlabeled_part():
    s = make_split(IDS[:12], num_labeled=2, num_val=2, num_test=2, unlabeled_only=["u1", "u0"])
    assert {"u0", "u1"} <= set(s.unlabeled)
    s.validate(IDS[:12] + ["u0", "u1"], IDS[:12])


def test_validation_names_the_offending_cases(tmp_path):
    with pytest.raises(SplitError, match=r"'labeled' and 'test' share 1 case\(s\): \['c01'\]"):
        Split(["c00", "c01"], ["c02"], ["c03"], ["c01"]).validate(IDS)
    with pytest.raises(SplitError, match=r"not found.*val: \['zz9'\]"):
        Split(["c00"], ["c02"], ["zz9"], ["c04"]).validate(IDS)
    with pytest.raises(SplitError, match=r"'test' case\(s\) without a label: \['c04'\]"):
        Split(["c00"], ["c02"], ["c03"], ["c04"]).validate(IDS, labeled_cases=IDS[:4])
    with pytest.raises(SplitError, match="duplicate"):
        Split(["c00", "c00"], [], [], []).validate(IDS)
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"labeled": ["c00"], "unlabeled": [], "val": [], "tests": []}))
    with pytest.raises(SplitError, match="unknown keys"):
        load_split_file(path)
    with pytest.raises(SplitError, match="cannot give"):
        make_split(IDS[:5], num_val=2, num_test=3)


def test_too_few_cases_for_num_labeled_names_the_counts_and_the_fix():
    """The held-out phantom once met a 12-case cache made by a debug run: the error says how many
    cases there are, where they went and what to change."""
    with pytest.raises(SplitError) as err:
        make_split([f"c{i:02d}" for i in range(12)], num_val=4, num_test=6, num_labeled=3)
    text = str(err.value)
    assert text.startswith("num_labeled=3 outside [1, 2]: the 12 labeled cases minus 6 test")
    assert "data.phantom.num_cases" in text and "data.module.num_labeled" in text
