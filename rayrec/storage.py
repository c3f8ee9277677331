"""Output locations that are local paths or pyarrow filesystem URIs (s3://, gs://, hdfs://, file://).

A URI may carry pyarrow's query options, for example
`s3://bucket/prepared?endpoint_override=127.0.0.1:9000&scheme=http`; `join` keeps them on
every child location. Credentials come from the filesystem's standard sources (for S3 the
AWS environment variables and files), never from rayrec. Imports no torch and no Ray, so
every stage can use it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)


def is_uri(location: str | Path) -> bool:
    """Return whether `location` names a remote filesystem; `file://` URIs count as local."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def without_query(location: str | Path) -> str:
    """Drop a URI's query options, which may carry credentials, for logs and messages."""
    return str(location).split("?", 1)[0]


def join(location: str | Path, *parts: str) -> str:
    """Append path parts to a local path or a URI, keeping the URI's query options at the end."""
    base, _, query = str(location).partition("?")
    joined = "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])
    return f"{joined}?{query}" if query else joined


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem and the path inside it; local paths become absolute."""
    if is_uri(location):
        filesystem, path = pafs.FileSystem.from_uri(str(location))
        return filesystem, path.rstrip("/")
    local = Path(str(location).removeprefix("file://")).expanduser().resolve()
    return pafs.LocalFileSystem(), str(local)


def exists(location: str | Path) -> bool:
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def write_text(location: str | Path, text: str) -> None:
    """Write a UTF-8 text file, creating parent folders on local disk."""
    filesystem, path = resolve(location)
    if isinstance(filesystem, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(text.encode("utf-8"))


def read_text(location: str | Path) -> str:
    filesystem, path = resolve(location)
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def replace_dir(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """Delete a folder if it exists, create it empty, and return its filesystem and path."""
    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        logger.warning("Replacing the existing output directory %s", without_query(location))
        filesystem.delete_dir(path)
    filesystem.create_dir(path, recursive=True)
    return filesystem, path


def upload_dir(local_dir: str | Path, location: str | Path) -> None:
    """Copy every file under a local folder to `location`, keeping relative paths."""
    filesystem, path = resolve(location)
    filesystem.create_dir(path, recursive=True)
    pafs.copy_files(str(Path(local_dir).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=filesystem)
    logger.info("Uploaded %s to %s", local_dir, without_query(location))
