import pytest

from rayrec.config import ConfigError, load_config


def test_defaults_without_file():
    config = load_config(None)

    assert config.data.dataset == "ml-100k"
    assert config.train.num_workers == 2


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_epochs: 3\n")
    config = load_config(path, ["train.lr=0.01", "model.dropout=0.3", "train.run_name=null", "train.use_gpu=false"])

    assert config.train.max_epochs == 3
    assert config.train.lr == 0.01
    assert config.model.dropout == 0.3
    assert config.train.run_name is None


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  hidden: 64\n")

    with pytest.raises(ConfigError, match="unknown key\\(s\\) hidden in ModelConfig. Valid keys: activation_checkpointing, architecture, dropout, hidden_size"):
        load_config(path)


def test_unknown_section_rejected(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("serving:\n  port: 1\n")

    with pytest.raises(ConfigError, match="unknown key\\(s\\) serving"):
        load_config(path)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="train: num_workers: expected int"):
        load_config(None, ["train.num_workers=two"])
    with pytest.raises(ConfigError, match="train: use_gpu: expected true or false"):
        load_config(None, ["train.use_gpu=1"])


def test_value_error_names_section():
    with pytest.raises(ConfigError, match="model: hidden_size \\(30\\) must be divisible"):
        load_config(None, ["model.hidden_size=30", "model.num_heads=4"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["train.lr"])


def test_missing_file():
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config("/nonexistent/run.yaml")


def test_shipped_config_loads():
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "ml-100k.yaml")
    assert config.data.dataset == "ml-100k"


def test_choice_key_lists_choices():
    with pytest.raises(ConfigError, match="train: lr_schedule: invalid value 'linear'; choose one of constant, cosine"):
        load_config(None, ["train.lr_schedule=linear"])


def test_nested_override_sets_column():
    config = load_config(None, ["data.dataset=null", "data.input_path=events.csv", "data.columns.user=uid"])

    assert config.data.columns.user == "uid"
    assert config.data.columns.item == "item_id"


def test_nested_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown key\\(s\\) login in ColumnMapping. Valid keys: event_type, item, rating"):
        load_config(None, ["data.columns.login=uid"])


def test_override_into_scalar_rejected(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.1\n")

    with pytest.raises(ConfigError, match="train.lr is not a section"):
        load_config(path, ["train.lr.value=1"])
    with pytest.raises(ConfigError, match="train: lr: expected float"):
        load_config(None, ["train.lr.value=1"])


def test_override_invalid_yaml_value():
    with pytest.raises(ConfigError, match="the value is not valid YAML"):
        load_config(None, ["train.run_name=[unclosed"])


def test_override_fills_empty_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\nmodel:\n  dropout: 0.1\n")

    config = load_config(path, ["train.max_epochs=7"])

    assert config.train.max_epochs == 7
    assert config.model.dropout == 0.1


def test_saved_config_loads_back(tmp_path):
    config = load_config(None, ["train.max_epochs=7", "data.columns.user=uid", "train.lr_schedule=constant"])
    config.save(tmp_path / "out" / "config.yaml")

    assert load_config(tmp_path / "out" / "config.yaml").to_dict() == config.to_dict()


def test_section_must_be_mapping(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: 5\n")

    with pytest.raises(ConfigError, match="train: expected a mapping for TrainConfig, got int"):
        load_config(path)
