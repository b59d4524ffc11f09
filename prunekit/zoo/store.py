"""Getting an entry's files: from the package, the cache, or a download, always checked by sha256.

Bundled files are read from the installed package. Anything else lives in the cache,
``$PRUNEKIT_HOME/zoo`` (default ``~/.cache/prunekit/zoo``), and is downloaded (``http``, ``https``,
``file``) from the ``url`` given, else from the mirror ``$PRUNEKIT_ZOO_URL`` (a directory URL holding
the files under their index names). A download is written under a temporary name in the cache and
takes its final name only after its size and sha256 match the index, so a failed, truncated or wrong
download leaves nothing behind. Every file is checked again each time it is used.
"""

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from prunekit.errors import PrunekitError
from prunekit.zoo.registry import FILES_DIR, ZooError

__all__ = ["fetch_file", "cache_dir", "sha256_file", "IntegrityError", "DownloadError", "MIRROR_ENV"]

MIRROR_ENV = "PRUNEKIT_ZOO_URL"
_SCHEMES = ("http", "https", "file")
_CHUNK = 1 << 20


class IntegrityError(PrunekitError, ValueError):
    """A file's size or sha256 differs from the index."""


class DownloadError(PrunekitError, OSError):
    """A file could not be downloaded."""


def cache_dir():
    """``$PRUNEKIT_HOME/zoo``, default ``~/.cache/prunekit/zoo`` (not created here)."""
    home = os.environ.get("PRUNEKIT_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "prunekit")
    return os.path.join(home, "zoo")


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check(path, spec):
    got = sha256_file(path)
    if got != spec["sha256"]:
        size = os.path.getsize(path)
        raise IntegrityError(f"{spec['name']} ({path}): sha256 {got} ({size} bytes) does not match the index's "
                             f"{spec['sha256']} ({spec['size']} bytes)")
    return path


def _file_url(base, filename):
    base = base.strip()
    if urllib.parse.urlsplit(base).path.rstrip("/").endswith("/" + filename):
        return base
    return base.rstrip("/") + "/" + urllib.parse.quote(filename)


def _download(url, dest, spec):
    scheme = urllib.parse.urlsplit(url).scheme
    hint = f"point {MIRROR_ENV} at a copy of the zoo's files (a directory URL, e.g. file:///data/prunekit-zoo/)"
    if scheme not in _SCHEMES:
        raise DownloadError(f"cannot download {url!r}: the scheme must be one of {', '.join(_SCHEMES)}; {hint}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=f".{spec['name']}.", suffix=".part")
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                size += len(chunk)
                if size > spec["size"]:  # never fill the disk with a wrong file
                    break
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if size != spec["size"] or got != spec["sha256"]:
            shown = f"more than {spec['size']}" if size > spec["size"] else str(size)
            raise IntegrityError(f"{spec['name']} downloaded from {url}: sha256 {got} ({shown} bytes) does not match "
                                 f"the index's {spec['sha256']} ({spec['size']} bytes); nothing was kept")
        os.replace(tmp, dest)
        return dest
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        if isinstance(e, IntegrityError):
            raise
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"downloading {url} failed ({type(e).__name__}: {reason}); {hint}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch_file(entry_name, spec, url=None):
    """A verified local path for one file ``spec`` (``{"name", "size", "sha256", "bundled"}``)."""
    if spec.get("bundled") and url is None:
        path = os.path.join(FILES_DIR, spec["name"])
        if not os.path.isfile(path):
            raise ZooError(f"{entry_name}: the bundled file {path} is missing from this installation "
                           "(a package built without its package data?)")
        return _check(path, spec)
    dest = os.path.join(cache_dir(), spec["name"])
    base = url or os.environ.get(MIRROR_ENV)
    if os.path.isfile(dest):
        try:
            return _check(dest, spec)
        except IntegrityError as e:
            if not base:
                raise IntegrityError(f"{e}; delete it, or fetch it again with url= or {MIRROR_ENV} set") from None
    if not base:
        raise DownloadError(f"{entry_name}: {spec['name']} is neither bundled nor in the cache ({dest}); set "
                            f"{MIRROR_ENV} to a mirror holding it (e.g. file:///data/prunekit-zoo/) or pass url=")
    return _download(_file_url(base, spec["name"]), dest, spec)
