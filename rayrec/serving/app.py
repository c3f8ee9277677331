"""Ray Serve application: recommender replicas that are their own FastAPI ingress.

Deploy it with `rayrec serve`, `serve run serve_configs/ml-100k.yaml` or `serve deploy`.
FastAPI validates each request before it joins a batch, so a bad request can never fail
the others in its batch. Each replica both answers HTTP and scores: a separate ingress
deployment would add a Ray actor call per request, which cost more CPU than scoring on
the 2-core machine the serving benchmark ran on.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from rayrec.models.quantize import Quantize

from rayrec.serving.http import api  # noqa: F401 - re-exported for the API reference generator
from rayrec.serving.recommender import Recommender


class AppArgs(BaseModel):
    """Arguments of `build_app`, set under `args:` in a Serve config file.

    The bundle to serve is not an argument: it is the Recommender's `user_config`, so it can
    change without a redeploy.
    """

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(16, ge=1, le=1024, description="Largest number of requests scored in one forward pass.")
    batch_wait_timeout_s: float = Field(0.005, ge=0.0, le=1.0, description="Maximum wait for a batch to fill, in seconds.")
    torch_threads: int = Field(1, ge=1, le=256, description="Intra-op threads per recommender replica.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where replicas run the model; auto picks CUDA when the replica has a GPU.")
    quantize: Quantize = Field("none", description="int8: dynamic int8 quantization of the model's nn.Linear layers (CPU only); "
                                                    "bf16: the Transformer layers in bfloat16 (for GPU replicas); none: float32.")
    user_id_key_file: str | None = Field(
        None, description="Absolute path of the key file of a bundle with pseudonymised user ids; default: $RAYREC_USER_ID_KEY in the replica.")
    auth_token_file: str | None = Field(
        None, description="Absolute path of a file with a bearer token that every route but /healthz requires; default: no token check.")
    auth_token_env: str | None = Field(
        None, description="Name of an environment variable of the replica that contains the bearer token, instead of a file.")

    @model_validator(mode="after")
    def _one_token_source(self) -> "AppArgs":
        if self.auth_token_file is not None and self.auth_token_env is not None:
            raise ValueError("set auth_token_file or auth_token_env, not both.")
        return self


def build_app(args: dict) -> serve.Application:
    """Build the application from the `args:` mapping of a Serve config file."""
    app_args = AppArgs(**args)
    return Recommender.bind(app_args.max_batch_size, app_args.batch_wait_timeout_s, app_args.torch_threads,
                            app_args.device, app_args.quantize, app_args.user_id_key_file, app_args.auth_token_file,
                            app_args.auth_token_env)
