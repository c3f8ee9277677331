"""Bearer token loading, Serve args for the privacy options, and a replica that lacks the user id key."""

import asyncio

import pytest
from pydantic import ValidationError

from rayrec.data.privacy import USER_ID_KEY_ENV, MissingUserIdKeyError
from rayrec.serving.app import AppArgs
from rayrec.serving.http import load_auth_token


def test_token_from_file_or_env(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("file-token-0123456789\n")
    monkeypatch.setenv("MY_API_TOKEN", "env-token-0123456789")

    assert load_auth_token(str(token_file), None) == "file-token-0123456789"
    assert load_auth_token(None, "MY_API_TOKEN") == "env-token-0123456789"
    assert load_auth_token(None, None) is None


def test_bad_token_sources_rejected(tmp_path, monkeypatch):
    monkeypatch.delenv("UNSET_TOKEN_VARIABLE", raising=False)
    short = tmp_path / "short"
    short.write_text("abc")

    with pytest.raises(ValueError, match="args.auth_token_file .*missing.* cannot be read"):
        load_auth_token(str(tmp_path / "missing"), None)
    with pytest.raises(ValueError, match="contains a token of 3 characters; use at least 16"):
        load_auth_token(str(short), None)
    with pytest.raises(ValueError, match="environment variable UNSET_TOKEN_VARIABLE .* token of 0 characters"):
        load_auth_token(None, "UNSET_TOKEN_VARIABLE")


def test_app_args_privacy_options():
    args = AppArgs(quantize="int8", user_id_key_file="/keys/users", auth_token_env="API_TOKEN")
    assert (args.quantize, args.user_id_key_file, args.auth_token_env) == ("int8", "/keys/users", "API_TOKEN")

    with pytest.raises(ValidationError, match="set auth_token_file or auth_token_env, not both"):
        AppArgs(auth_token_file="/t", auth_token_env="API_TOKEN")
    with pytest.raises(ValidationError, match="quantize"):
        AppArgs(quantize="int4")


def _bundle_dir(tmp_path, pseudonymised: bool):
    import numpy as np
    import pyarrow as pa

    from rayrec.data.privacy import schema_metadata
    from rayrec.models.bundle import write_bundle
    from rayrec.models.config import ModelConfig
    from rayrec.models.factory import build_model

    config = ModelConfig(max_len=5, hidden_size=8, num_layers=1, num_heads=2, dropout=0.0)
    histories = pa.table({"user_id": ["a" * 32], "item_ids": pa.array([[1, 2]], pa.list_(pa.int32()))})
    if pseudonymised:
        histories = histories.replace_schema_metadata(schema_metadata(b"replica-test-key-0123456789"))
    return write_bundle(
        tmp_path / "bundle", state_dict=build_model(config, 3).state_dict(), model_config=config, num_items=3,
        vocab=pa.table({"item_index": pa.array(np.arange(1, 4), pa.int32()), "item_id": ["x", "y", "z"]}),
        histories=histories, popularity=pa.table({"item_index": pa.array([1, 2, 3], pa.int32()), "count": [3, 2, 1]}),
        metrics={}, dataset="tiny",
    )


def _replica_class():
    """The user class under Serve's deployment and FastAPI ingress wrappers, whose __init__ is async."""
    from rayrec.serving import recommender

    return next(cls for cls in recommender.Recommender.func_or_class.__mro__
                if getattr(cls.__dict__.get("__init__"), "__module__", None) == recommender.__name__)


def test_replica_without_key_refuses_to_start(tmp_path, monkeypatch):
    monkeypatch.delenv(USER_ID_KEY_ENV, raising=False)
    bundle_dir = _bundle_dir(tmp_path, pseudonymised=True)
    replica = _replica_class()(device="cpu")

    with pytest.raises(MissingUserIdKeyError, match=f"bundle {bundle_dir} .its user ids are pseudonymised.*{USER_ID_KEY_ENV}"):
        asyncio.run(replica.reconfigure({"bundle_path": str(bundle_dir)}))
    assert replica.bundle is None


def test_replica_quantizes_int8(tmp_path):
    import torch

    bundle_dir = _bundle_dir(tmp_path, pseudonymised=False)
    replica = _replica_class()(device="cpu", quantize="int8")
    asyncio.run(replica.reconfigure({"bundle_path": str(bundle_dir)}))

    modules = list(replica.bundle.model.modules())
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in modules)
    assert not any(type(m) is torch.nn.Linear for m in modules)
    assert replica.metadata()["quantize"] == "int8"
    assert replica.metadata()["user_ids"] is None


def test_replica_serves_bf16(tmp_path):
    import torch

    bundle_dir = _bundle_dir(tmp_path, pseudonymised=False)
    replica = _replica_class()(device="cpu", quantize="bf16")
    asyncio.run(replica.reconfigure({"bundle_path": str(bundle_dir)}))

    assert {m.weight.dtype for m in replica.bundle.model.modules() if isinstance(m, torch.nn.Linear)} == {torch.bfloat16}
    assert replica.metadata()["quantize"] == "bf16"
