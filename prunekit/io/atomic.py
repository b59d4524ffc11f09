"""Write a file so that readers see the old file or the whole new one, never a part (stdlib only).

``with atomic_path("model.onnx") as tmp: onnx.save(model, tmp)`` gives a unique temporary name in the
destination's directory (so the final ``os.replace`` is a rename on one file system), fsyncs it, and
renames it over the destination when the block ends without an error. On any error the temporary file is
removed and the destination is left as it was. Two writers never share a temporary name.
"""

import contextlib
import os
import tempfile

__all__ = ["atomic_path", "atomic_open"]


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path):
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """A temporary path beside ``path`` for a writer that takes a file name; renamed over ``path`` at the end.

    Args:
        path: the destination.
        suffix: the temporary name's ending (default: ``path``'s own extension, which writers such as
            Keras's ``model.save`` require).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1] if suffix is None else suffix
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: directory {directory!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp" + suffix, dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(directory)


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """An open file object whose contents replace ``path`` only when the block ends without an error."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
