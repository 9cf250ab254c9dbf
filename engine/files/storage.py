"""URLs: object storage and http(s) through fsspec, the one home of URL handling.

Rules:
- A URL is `scheme://...` with a scheme of two letters or more (`s3://`, `gs://`,
  `az://`, `file://`, `https://`, `memory://`); `-` and local paths (`C:\\x` too) are not.
- fsspec and its drivers are imported when a URL is first used, never by `import engine`.
  A driver that is not installed is one ConfigError line naming the extra that brings it
  (`pip install 'adbatch[s3]'`); an unknown scheme is one line too.
- Credentials come the standard way (boto's environment and profiles, Google ADC, the
  Azure environment): nothing here reads them. `AWS_ENDPOINT_URL` (and
  `AWS_ENDPOINT_URL_S3`) is honoured by botocore itself, as by the AWS CLI.
- Nothing secret reaches a message: a URL is shown without its password and query
  values, an option whose key names a credential without its value (core/urls.py), and
  a driver's own error text goes through the redactor with those values.
- `--storage-option key=value` values: `true`/`false` become booleans and whole numbers
  ints (fsspec's drivers want them typed); everything else stays a string. A dotted key
  sets one level of a dict: `client_kwargs.region_name=eu-west-1`.
- The drivers' loggers are silenced when a filesystem is first made (gcsfs logs
  tracebacks to stderr): their errors reach the user as one line, through `reason`.
- A store that cannot be reached is "cannot reach the store (...)", never "no such
  object" (a driver may raise FileNotFoundError for both).
- Reads stream: an object is opened for ranged reads of `BLOCK_SIZE` bytes, never
  downloaded whole first; a range whose read fails for a reason that may pass (a 5xx, a
  reset, a timeout) is read again in place a few times (files/reread.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

from engine.core.errors import ConfigError, InputError, OutputError
from engine.core.secrets import Secrets
from engine.core.urls import (
    credentials,
    secret_option,
    shown_option,
    split_url,
    without_credentials,
)
from engine.core.urls import parse_option as parse_option  # re-exported
from engine.files.reread import retrying

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

#: `--storage-option key=value` pairs, as Config holds them (a mapping is taken too).
StorageOptions = tuple[tuple[str, str], ...] | Mapping[str, str]

#: Bytes per ranged read of an object (fsspec's `block_size`).
BLOCK_SIZE = 8 << 20

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")
_WHOLE = re.compile(r"[+-]?[0-9]+")
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
#: scheme -> (the module fsspec needs for it, the extra that installs it).
_DRIVERS = {
    "s3": ("s3fs", "s3"),
    "s3a": ("s3fs", "s3"),
    "gs": ("gcsfs", "gcs"),
    "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "abfs": ("adlfs", "azure"),
    "abfss": ("adlfs", "azure"),
    "adl": ("adlfs", "azure"),
    "http": ("aiohttp", ""),
    "https": ("aiohttp", ""),
}
#: The drivers' loggers: gcsfs logs a failed request's traceback at ERROR, which Python's
#: last-resort handler prints to stderr. Their errors reach the user as our one line.
_DRIVER_LOGGERS = ("fsspec", "s3fs", "gcsfs", "adlfs", "aiobotocore", "botocore",
                   "azure", "google.auth", "urllib3")  # fmt: skip
#: Schemes whose paths are not globbed (a `?` starts a query there).
_NO_GLOB = ("http", "https")


def is_url(name: str) -> bool:
    """True for `scheme://...` with a scheme of 2+ letters; False for `-` and paths."""
    return _URL.match(name) is not None


def scheme(url: str) -> str:
    """The URL's scheme, lower case (`S3://b/k` -> `s3`)."""
    found = _URL.match(url)
    return found.group(1).lower() if found else ""


def canonical(url: str) -> tuple[str, str] | None:
    """The store and the path within it that `url` names, whatever its spelling: s3a://
    is s3://, gcs:// gs://, az:// and abfss:// abfs:// (the driver's first protocol,
    fsspec's own stripping); a file:// URL is ("file", its local path). None when fsspec
    or the driver is missing: the URL then stands for itself."""
    name = scheme(url)
    try:
        import fsspec

        cls = fsspec.get_filesystem_class(name)
    except (ImportError, ValueError):
        return None
    protocol = cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0]
    spelled = f"{name}{url[len(name) :]}"  # the scheme in lower case
    if name in _NO_GLOB:
        return protocol, spelled.partition("://")[2]
    return protocol, str(cls._strip_protocol(spelled))


def shown(url: str) -> str:
    """The URL as a message shows it (no password, no query values)."""
    return without_credentials(url)


def source_name(path: str) -> str:
    """How a record's `source` names an input: a URL as `shown` (no password, no query
    values: records are shared more widely than the command line), a path as given. The
    reader and the resume index both see this form, so --resume matches by it."""
    return shown(path) if is_url(path) else path


def _typed(value: str) -> Any:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    if _WHOLE.fullmatch(value):
        return int(value)
    return value


def _pairs(options: StorageOptions) -> tuple[tuple[str, str], ...]:
    return tuple(options.items()) if isinstance(options, Mapping) else tuple(options)


def storage_kwargs(options: StorageOptions) -> dict[str, Any]:
    """The options as fsspec keyword arguments (typed, dotted keys nested once)."""
    kwargs: dict[str, Any] = {}
    for key, value in _pairs(options):
        outer, dot, inner = key.partition(".")
        if dot:
            nested = kwargs.setdefault(outer, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"--storage-option {outer} is given both as a value and a table")
            nested[inner] = _typed(value)
        elif key.endswith("_kwargs"):  # client_kwargs, config_kwargs: always a table
            raise ConfigError(
                f"--storage-option {key} is a table: give its keys as {key}.NAME=VALUE"
            )
        else:
            kwargs[key] = _typed(value)
    return kwargs


def _secrets(options: StorageOptions, url: str = "") -> Secrets:
    values = [value for key, value in _pairs(options) if secret_option(key)]
    values += [v for v in credentials(url) if len(v) >= 4]  # not every `a` of a message
    values += [os.environ.get(var, "") for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    return Secrets(tuple(v for v in values if v), min_length=1)


#: Errors (by class name) of a store that could not be reached, from the drivers' stacks.
_UNREACHABLE = ("ClientConnectorError", "EndpointConnectionError", "ConnectTimeoutError",
                "ServerDisconnectedError", "ServiceRequestError")  # fmt: skip


def unreachable(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the store could not be reached at all: a
    driver may report that as FileNotFoundError, which is not "no such object"."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ConnectionError) or type(seen).__name__ in _UNREACHABLE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _answered(exc: BaseException) -> int | None:
    """The HTTP status (not 404) in what caused `exc` (fsspec's http: a 503 as not found)."""
    seen: BaseException | None = exc
    for _ in range(10):
        status = getattr(seen, "status", None)
        if isinstance(status, int) and status != 404 and 400 <= status <= 599:
            return status
        seen = seen and (seen.__cause__ or seen.__context__)
    return None


def reason(exc: BaseException, options: StorageOptions = (), url: str = "") -> str:
    """A driver's exception as one redacted line (the storage options' secrets, and
    `url`'s password and query values, wherever the store quoted them)."""
    text = str(exc).strip().splitlines()
    # URLs shown as messages show them, before this wraps the line in words of its own
    line = re.sub(r"\w+://\S+", lambda m: shown(m.group()), text[0]) if text else ""
    refused = _UNEXPECTED.search(line) if isinstance(exc, TypeError) else None
    if refused and refused.group(1) in dict(_pairs(options)):  # raised by the driver late
        line = f"the driver does not take the storage option {refused.group(1)}"
    elif unreachable(exc):
        line = f"cannot reach the store ({line})" if line else "cannot reach the store"
    elif (status := _answered(exc)) is not None:  # fsspec's http: a 5xx as "not found"
        line = f"the store answered HTTP {status}"
    elif isinstance(exc, FileNotFoundError):
        line = "no such object"
    elif isinstance(exc, PermissionError):
        line = f"permission denied ({line})" if line else "permission denied"
    line = line if line else type(exc).__name__
    return _secrets(options, url).redact(line)


def quiet_drivers() -> None:
    """Keep the drivers' own log records (tracebacks) off stderr: a NullHandler each, not
    propagated to the root logger. Idempotent."""
    for name in _DRIVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())
        logger.propagate = False


def filesystem(url: str, options: StorageOptions = ()) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path within it; ConfigError when its driver
    is missing (naming the extra), its scheme unknown or an option refused."""
    quiet_drivers()
    name = scheme(url)
    if not name:
        raise ConfigError(f"{shown(url)} is not a URL")
    module, extra = _DRIVERS.get(name, ("", ""))
    try:
        import fsspec
    except ImportError:
        how = f"pip install 'adbatch[{extra}]'" if extra else "pip install fsspec"
        raise ConfigError(f"{shown(url)}: URLs need fsspec: {how}") from None
    try:
        cls = fsspec.get_filesystem_class(name)
    except ImportError:
        needs = f" ({module})" if module else ""
        raise ConfigError(
            f"{shown(url)}: the {name}:// driver{needs} is not installed: "
            f"pip install 'adbatch[{extra}]'"
            if extra
            else f"{shown(url)}: the {name}:// driver is not installed"
        ) from None
    except ValueError:
        raise ConfigError(
            f"{shown(url)}: unknown storage scheme {name}:// "
            "(s3://, gs://, az://, file://, http(s):// and the other fsspec schemes work)"
        ) from None
    try:
        fs = cls(**storage_kwargs(options))
    except ConfigError:
        raise
    except Exception as exc:  # a driver refusing an option: its own words, redacted
        given = ", ".join(shown_option(k, v) for k, v in _pairs(options)) or "none"
        raise ConfigError(
            f"{shown(url)}: the {name}:// driver refused the storage options "
            f"({given}): {reason(exc, options)}"
        ) from None
    return fs, url if name in _NO_GLOB else cls._strip_protocol(url)


def _url_of(name: str, path: str) -> str:
    return path if "://" in path else f"{name}://{path}"


def _glob(url: str) -> bool:
    return scheme(url) not in _NO_GLOB and any(ch in url for ch in "*?[")


def expand(url: str, options: StorageOptions = ()) -> list[str]:
    """A glob or a prefix ending in `/` -> its objects' URLs, sorted; a plain object URL
    -> itself, once it is known to exist. InputError (one line) when nothing matches."""
    name = scheme(url)
    parts = split_url(url, f"input {name}://...")  # an unclosed '[': one line, not quoted
    fs, path = filesystem(url, options)
    if name in _NO_GLOB:
        where = parts.path
        if not where or where.endswith("/") or any(ch in where for ch in "*["):
            raise InputError(
                f"input {shown(url)}: an http(s) input must name one object "
                "(http cannot list: no glob, no prefix)"
            )
    fs.invalidate_cache()  # a listing cached by an earlier run in this process may be stale
    try:
        if _glob(url):
            found = fs.glob(path, detail=True)
        elif url.endswith("/") and name not in _NO_GLOB:
            found = fs.find(path, detail=True)
        else:
            info = fs.info(path)
            if info.get("type") == "directory":
                raise InputError(
                    f"input {shown(url)} is a directory; end it with / for its objects"
                )
            _remember_size(url, info)
            return [url]
        objects = [p for p, info in found.items() if info.get("type") != "directory"]
        for p in objects:
            _remember_size(_url_of(name, p), found[p])
    except (InputError, ConfigError):
        raise
    except Exception as exc:
        raise InputError(f"cannot read input {shown(url)}: {reason(exc, options, url)}") from None
    if not objects:
        raise InputError(f"no objects match input {shown(url)}")
    return [_url_of(name, p) for p in sorted(objects)]


#: Object sizes seen when the inputs were listed (`expand`): the progress display's total
#: for URL inputs, at no extra request.
_SIZES: dict[str, int] = {}


def _remember_size(url: str, info: Mapping[str, Any]) -> None:
    size = info.get("size")
    if isinstance(size, int):
        _SIZES[url] = size


def known_size(url: str) -> int | None:
    """The object's size as listed by `expand` in this process; None when not listed."""
    return _SIZES.get(url)


def expand_inputs(
    inputs: tuple[str, ...], options: StorageOptions = (), *, output: str | None = None
) -> tuple[str, ...]:
    """Every URL input expanded (`expand`), paths and `-` as they are, in order. A glob
    or prefix leaves out what the run writes to `output`: the object, its manifest and
    its parts (`OUT.parts/`: a rerun's progress), so they are never read as input."""
    out: list[str] = []
    for name in inputs:
        if not is_url(name):
            out.append(name)
            continue
        found = expand(name, options)
        listed = output is not None and (_glob(name) or name.endswith("/"))  # not one object
        kept = [url for url in found if not (listed and _written_by_run(url, output or ""))]
        if not kept:
            raise InputError(f"input {shown(name)} holds only the output {shown(output or '')}")
        out.extend(kept)
    return tuple(out)


def _written_by_run(url: str, output: str) -> bool:
    """`url` is the run's output, its manifest, or under its parts prefix (names
    compared without their scheme: `memory:///a` is `memory://a`, `file:///a` is `/a`)."""
    found, out = _bare(url), _bare(output if is_url(output) else os.path.abspath(output))
    return found in (out, out + ".manifest.json") or found.startswith(out + ".parts/")


def _bare(name: str) -> str:
    return name.split("://", 1)[-1].strip("/")


def open_read(url: str, options: StorageOptions = ()) -> BinaryIO:
    """The object's bytes, streamed by ranged reads (never downloaded whole first); a
    read that fails for a reason that may pass is tried again in place (files/reread.py)."""
    fs, path = filesystem(url, options)
    try:
        opened = fs.open(path, "rb", block_size=BLOCK_SIZE)
    except Exception as exc:
        raise InputError(f"cannot read input {shown(url)}: {reason(exc, options, url)}") from None
    return retrying(opened, lambda exc: reason(exc, options, url))  # type: ignore[no-any-return]


def is_local(fs: AbstractFileSystem) -> bool:
    """A local disk (`file://`), where a write cut short leaves half a file."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def check_bucket(fs: AbstractFileSystem, path: str, url: str, options: StorageOptions = ()) -> None:
    """ConfigError (exit 2) naming the bucket (container) of the output at `path` when the
    store says it does not exist: found before anything is sent, not at the first upload.
    A store that cannot tell (no such request allowed) is left to the first write."""
    if is_local(fs) or not hasattr(fs, "split_path"):
        return
    bucket = str(fs.split_path(path)[0])
    try:
        fs.info(bucket)
    except FileNotFoundError as exc:
        if not unreachable(exc):
            raise ConfigError(
                f"output {shown(url)}: the bucket {bucket} does not exist "
                "(or these credentials cannot see it)"
            ) from None
        raise ConfigError(f"output {shown(url)}: {reason(exc, options, url)}") from None
    except Exception as exc:
        if unreachable(exc):
            raise ConfigError(f"output {shown(url)}: {reason(exc, options, url)}") from None
        # cannot tell (no permission to look): the first write says


def put_whole(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    """Write the object at `path` whole: one PUT on an object store; a temporary file and
    a rename on a local one (where a write can be cut short)."""
    if is_local(fs):
        fs.makedirs(path.rpartition("/")[0] or "/", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        fs.pipe_file(tmp, data)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, data)


def write_object(url: str, data: bytes, options: StorageOptions = ()) -> None:
    """Write the object at `url` whole (`put_whole`); OutputError (one line) when refused."""
    fs, path = filesystem(url, options)
    try:
        put_whole(fs, path, data)
    except Exception as exc:
        raise OutputError(f"cannot write {shown(url)}: {reason(exc, options, url)}") from None


def read_object(url: str, options: StorageOptions = ()) -> bytes | None:
    """The object at `url` whole (a small one: a manifest); None when there is none."""
    fs, path = filesystem(url, options)
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise InputError(f"cannot read {shown(url)}: {reason(exc, options, url)}") from None


@contextlib.contextmanager
def writing(fs: AbstractFileSystem, path: str) -> Iterator[BinaryIO]:
    """The object at `path` open for a streamed write, kept only when the block ends
    well: on an error the upload is discarded (s3fs aborts its multipart upload, so no
    incomplete upload is left to bill) or the local file removed -- fsspec's own `with`
    would commit what was written so far."""
    from fsspec.spec import AbstractBufferedFile

    out = fs.open(path, "wb", block_size=BLOCK_SIZE)
    try:
        yield out
        out.close()  # the last part and the completion: a failure there discards too
    except BaseException:
        base = AbstractBufferedFile.discard
        with contextlib.suppress(Exception):
            if isinstance(out, AbstractBufferedFile) and type(out).discard is not base:
                out.discard()  # an upload of its own (S3's multipart, GCS's resumable)
                out.closed = True  # so that its __del__ does not complete it after all
            else:  # a local or in-memory file: what was written is there; remove it
                out.close()
                fs.rm_file(path)
        raise
