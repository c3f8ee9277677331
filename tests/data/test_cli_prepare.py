"""`rayrec prepare` from a YAML config: the printed report and one-line errors."""

import json

import pytest

from rayrec.cli import main

pytestmark = pytest.mark.ray

CONFIG = """\
data:
  dataset: null
  input_path: {input_path}
  output_dir: {output_dir}
  format: csv
  delimiter: ";"
  columns: {{user: visitor, item: sku, timestamp: ts}}
  on_invalid: {on_invalid}
"""


def _config(tmp_path, rows, on_invalid="error"):
    log = tmp_path / "log.csv"
    log.write_text("visitor;sku;ts\n" + "".join(f"{row}\n" for row in rows))
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG.format(input_path=log, output_dir=tmp_path / "out", on_invalid=on_invalid))
    return path


def test_cli_prepare_prints_report(ray_local, tmp_path, capsys):
    rows = ["a;x;1", "a;y;2", "a;z;3", "b;x;1", "b;y;2", "b;z;3", "b;w;bad"]

    assert main(["prepare", "--config", str(_config(tmp_path, rows, on_invalid="skip"))]) == 0
    printed = capsys.readouterr().out
    report, _ = json.JSONDecoder().raw_decode(printed[printed.index("{"):])

    assert report["rows_read"] == 7
    assert report["dropped"]["unparsable_timestamp"] == 1
    assert report["rows_kept"] == 6
    assert report == json.loads((tmp_path / "out" / "stats.json").read_text())


def test_cli_prepare_bad_row_exits_with_location(ray_local, tmp_path, capsys):
    rows = ["a;x;1", "a;y;1.5"]

    assert main(["prepare", "--config", str(_config(tmp_path, rows))]) == 2
    error = capsys.readouterr().err

    assert "log.csv: line 3, column 'ts': value '1.5'" in error
    assert "on_invalid: skip" in error
