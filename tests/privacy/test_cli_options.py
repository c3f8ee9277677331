"""`rayrec recommend` with --explain, --quantize and pseudonymised bundles, on a tiny bundle."""

import json

import numpy as np
import pytest
from privacy_bundles import tiny_bundle

from rayrec.cli import main
from rayrec.data.privacy import USER_ID_KEY_ENV
from rayrec.models.bundle import load_bundle
from rayrec.models.explain import explain_items

KEY = b"cli-test-key-0123456789abcdef"


def _recommend(capsys, *arguments) -> dict:
    assert main(["recommend", *arguments]) == 0
    return json.loads(capsys.readouterr().out)


def test_explain_adds_reasons(tmp_path, capsys):
    bundle_dir = tiny_bundle(tmp_path / "bundle")
    history = ["item-3", "item-7", "item-5"]

    body = _recommend(capsys, "--bundle", str(bundle_dir), "--history", *history, "-k", "4", "--explain")

    bundle = load_bundle(bundle_dir)
    ranked = [bundle.item_index[item["item_id"]] for item in body["items"]]
    expected = explain_items(bundle.model, np.array([3, 7, 5]), ranked, bundle.model.config.max_len)
    assert len(body["items"]) == 4
    for item, reasons in zip(body["items"], expected):
        assert [reason["item_id"] for reason in item["reasons"]] == [f"item-{r.item_index}" for r in reasons]
        assert [reason["weight"] for reason in item["reasons"]] == pytest.approx([r.weight for r in reasons])
        assert len(item["reasons"]) == 3


def test_no_reasons_without_explain(tmp_path, capsys):
    body = _recommend(capsys, "--bundle", str(tiny_bundle(tmp_path / "bundle")), "--history", "item-3", "item-7")

    assert all("reasons" not in item for item in body["items"])


def test_int8_returns_k_items(tmp_path, capsys):
    body = _recommend(capsys, "--bundle", str(tiny_bundle(tmp_path / "bundle")), "--history", "item-3", "item-7",
                      "-k", "5", "--quantize", "int8")

    assert len(body["items"]) == 5
    assert not {"item-3", "item-7"} & {item["item_id"] for item in body["items"]}


def test_pseudonymised_user_needs_key(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(USER_ID_KEY_ENV, raising=False)
    bundle_dir = tiny_bundle(tmp_path / "bundle", key=KEY)
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY)

    assert main(["recommend", "--bundle", str(bundle_dir), "--user-id", "alice-91"]) == 2
    assert "its user ids are pseudonymised" in capsys.readouterr().err

    body = _recommend(capsys, "--bundle", str(bundle_dir), "--user-id", "alice-91", "--user-id-key-file", str(key_file))
    assert body["fallback"] is False
    assert body["unknown_user"] is False

    monkeypatch.setenv(USER_ID_KEY_ENV, KEY.decode())
    assert _recommend(capsys, "--bundle", str(bundle_dir), "--user-id", "alice-91")["fallback"] is False
    assert _recommend(capsys, "--bundle", str(bundle_dir), "--user-id", "bob-17")["unknown_user"] is True


def test_wrong_key_rejected(tmp_path, capsys):
    bundle_dir = tiny_bundle(tmp_path / "bundle", key=KEY)
    key_file = tmp_path / "key"
    key_file.write_bytes(b"another-key-0123456789abcdef")

    assert main(["recommend", "--bundle", str(bundle_dir), "--user-id", "alice-91", "--user-id-key-file", str(key_file)]) == 2
    assert "made with the key whose fingerprint" in capsys.readouterr().err


def test_evaluate_int8_matches_float_keys(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bundle_dir = tiny_bundle(tmp_path / "bundle")
    (tmp_path / "prepared" / "test").mkdir(parents=True)
    histories = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [2, 10]]
    pq.write_table(pa.table({"user_id": ["a", "b", "c", "d"], "history": pa.array(histories, pa.list_(pa.int32())),
                             "target": pa.array([4, 6, 10, 11], pa.int32())}),
                   tmp_path / "prepared" / "test" / "part-00000.parquet")
    arguments = ["evaluate", "--bundle", str(bundle_dir), "--prepared", str(tmp_path / "prepared")]

    assert main(arguments) == 0
    float_metrics = json.loads(capsys.readouterr().out)
    assert main(arguments + ["--quantize", "int8"]) == 0
    int8_metrics = json.loads(capsys.readouterr().out)

    assert float_metrics["test_users"] == 4
    assert int8_metrics["test_users"] == 4
    assert set(int8_metrics) == set(float_metrics)
    assert 0.0 <= int8_metrics["test_ndcg@10"] <= 1.0
    assert main(arguments + ["--quantize", "int8", "--split", "valid"]) == 2
    assert "valid not found" in capsys.readouterr().err
