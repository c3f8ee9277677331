"""Delete one user's rows from a prepared folder or from a bundle's stored histories.

A prepared folder keeps a user in sequences/, train/, valid/ and test/; a bundle keeps it in
histories.parquet, the history that `user_id` requests look up. Every file that contains
the user is rewritten without those rows, each through a temporary file and an atomic rename.

What stays: aggregate counts (vocab.parquet, popularity.parquet, stats.json) and model
weights still reflect the deleted user's events until the next preprocessing and training.
A running Serve deployment keeps its in-memory copy of the histories until its replicas
load the bundle again (a redeploy or restart).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayrec.data.privacy import user_id_info, user_id_lookup

logger = logging.getLogger(__name__)

PREPARED_PARTS = ("sequences", "train", "valid", "test")
BUNDLE_HISTORIES = "histories.parquet"


class UserNotFoundError(ValueError):
    """The user to delete has no row in any file."""


def prepared_user_files(prepared_dir: str | Path) -> list[Path]:
    """Return the Parquet files of a prepared folder that hold user rows."""
    root = Path(prepared_dir)
    missing = [part for part in PREPARED_PARTS if not (root / part).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} is not a prepared folder: missing {', '.join(missing)}. "
                                "Pass the data.output_dir that `rayrec prepare` wrote.")
    return sorted(path for part in PREPARED_PARTS for path in (root / part).glob("*.parquet"))


def bundle_user_files(bundle_dir: str | Path) -> list[Path]:
    """Return the bundle's stored histories file."""
    root = Path(bundle_dir)
    if "://" in str(bundle_dir):
        raise ValueError(f"{bundle_dir}: delete-user works on a local bundle directory; copy the bundle here, "
                         "delete the user, and upload it again.")
    if not (root / "bundle.json").is_file() or not (root / BUNDLE_HISTORIES).is_file():
        raise FileNotFoundError(f"{root} is not a rayrec bundle: bundle.json or {BUNDLE_HISTORIES} is missing.")
    return [root / BUNDLE_HISTORIES]


def delete_user(root: str | Path, files: list[Path], user_id: str, key_file: str | None = None) -> dict[str, int]:
    """Remove `user_id`'s rows from `files` under `root`; return rows removed per file (relative path).

    The raw `user_id` is hashed first when the files hold pseudonymised ids, which needs the
    key. Raises UserNotFoundError, and changes nothing, when no file contains the user.
    """
    root = Path(root)
    if not files:
        raise FileNotFoundError(f"{root} has no Parquet file with user rows.")
    info = user_id_info(pq.read_schema(files[0]))
    stored_id = user_id_lookup(info, key_file, str(root)).stored_id(str(user_id))

    # Read and filter every file before writing any, so an unknown user leaves all of them as they were.
    kept_tables, removed = {}, {}
    for path in files:
        table = pq.read_table(path)
        kept = table.filter(pc.invert(pc.equal(table["user_id"], stored_id)))
        removed[str(path.relative_to(root))] = table.num_rows - kept.num_rows
        if kept.num_rows < table.num_rows:
            kept_tables[path] = kept

    if not kept_tables:
        hint = " User ids there are pseudonymised; check that the key is the one preprocessing used." if info else ""
        raise UserNotFoundError(f"the user was not found in {len(files)} file(s) under {root}; nothing was changed.{hint}")

    for path, table in kept_tables.items():
        _replace_file(path, table)
    logger.info("Deleted %d row(s) of one user from %d file(s) under %s", sum(removed.values()), len(kept_tables), root)
    return removed


def _replace_file(path: Path, table) -> None:
    temporary = path.with_name(f".{path.name}.deleting")
    pq.write_table(table, temporary)
    os.replace(temporary, path)
