import shutil

import pytest

from r2f.engine.data import DataError, Tofu


def test_splits_and_relations(tofu):
    forget = tofu.split("forget10")
    assert len(forget) == 400 and forget[0].id == "tofu-3600"
    assert all(len(q.perturbed_answers) == 5 and q.paraphrased_question for q in forget)
    assert {q.author for q in forget} == set(Tofu.forget_authors("forget10"))
    retain = tofu.split("retain90")
    assert not {q.id for q in retain} & {q.id for q in forget}
    assert len(tofu.split("holdout10")) == 400
    assert [q.id for q in tofu.split("retain_perturbed")] == [q.id for q in tofu.authors(range(20))]
    assert len(tofu.split("real_authors")[0].perturbed_answers) == 3
    assert len(tofu.idontknow()) == 100


def test_unknown_split(tofu):
    with pytest.raises(DataError, match="unknown split 'forget20'"):
        tofu.split("forget20")


@pytest.fixture()
def data_copy(tmp_path, tofu):
    dst = tmp_path / "tofu"
    shutil.copytree(tofu.root, dst)
    return dst


def test_manifest_detects_edit(data_copy):
    p = data_copy / "forget10.json"
    p.write_text(p.read_text().replace("Hsiao", "Hsaio", 1))
    with pytest.raises(DataError, match="forget10.json: sha256 differs"):
        Tofu(data_copy)


def test_relation_violation_names_file_and_row(data_copy):
    p = data_copy / "forget10.json"
    lines = p.read_text().splitlines()
    lines[0], lines[1] = lines[1], lines[0]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="forget10.json: is not the tail of full.json"):
        Tofu(data_copy, verify=False)


def test_malformed_row_named(data_copy):
    p = data_copy / "holdout10.json"
    p.write_text(p.read_text() + '{"question": "q", "answer": "  "}\n')
    with pytest.raises(DataError, match=r"holdout10.json:401: field 'answer'"):
        Tofu(data_copy, verify=False)
