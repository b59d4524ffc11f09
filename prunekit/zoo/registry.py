"""The zoo's index: what each entry is, where its files come from and what was measured on it.

The index is ``prunekit/zoo/index.json`` (written by ``scripts/build_zoo.py``); every entry is an
:class:`Entry`. Names are looked up exactly; an unknown name is an error naming the closest ones.
"""

import difflib
import json
import os
from dataclasses import dataclass, field

from prunekit.errors import ConfigError
from prunekit.zoo.transforms import Transform

__all__ = ["Entry", "ZooError", "entries", "find", "INDEX_PATH", "FILES_DIR", "TASKS"]

HERE = os.path.dirname(os.path.abspath(__file__))
INDEX_PATH = os.path.join(HERE, "index.json")
FILES_DIR = os.path.join(HERE, "files")
INDEX_VERSION = 1
TASKS = ("classification", "detection")
MEASURED = "measured here"
PUBLISHED = "published by the original tool, not reproduced"


class ZooError(ConfigError):
    """An unknown entry, or an entry that cannot be used as asked."""


@dataclass(frozen=True)
class Entry:
    """One model of the zoo.

    Attributes:
        name: its key (``zoo.load(name)``).
        task: ``classification`` or ``detection``.
        architecture: the network, e.g. ``seed-cnn`` or ``resnet50-v1d``.
        dataset: the data set it was trained on, as :func:`prunekit.data.load` names it
            (``fashion-mnist``, ``fashion-mnist:0-4``), or the original's (``imagenet``, ``coco``).
        pattern: how its zeros are placed; a string :func:`prunekit.core.parse_pattern` accepts.
        sparsity: zeros / elements over the tensors in ``pruned``, exactly as stored.
        metrics: ``{"top1": fraction}`` (classification) or ``{"map": .., "map50": ..}`` (detection).
        recipe: the exact command that trained it.
        files: ``({"name", "size", "sha256", "bundled"}, ...)``; the first is the entry's file.
        source: where the weights come from, in words.
        license: of the weights.
        input: preprocessing: ``size`` (H, W), ``channels``, ``mean``, ``std``; see :meth:`transforms`.
        pruned: the weight names (IR names) its recipe pruned; ``sparsity`` is over these.
        metrics_origin: ``measured here`` or ``published by the original tool, not reproduced``.
        user_weights: ``True`` when prunekit ships only the graph and the user supplies the weights.
        check: a slice of the test set and the metric measured on it, for quick re-checks.
        notes: anything a user should know.
    """

    name: str
    task: str
    architecture: str
    dataset: str
    pattern: str
    sparsity: float
    metrics: dict
    recipe: str
    files: tuple
    source: str
    license: str
    input: dict = field(default_factory=dict)
    pruned: tuple = ()
    metrics_origin: str = MEASURED
    user_weights: bool = False
    check: dict = field(default_factory=dict)
    notes: str = ""

    def transforms(self):
        """The callable that turns a uint8 batch ``(N, C, H, W)`` into this model's input."""
        spec = self.input
        return Transform(spec["size"], spec.get("channels", 1), spec.get("mean"), spec.get("std"))

    @property
    def classes(self):
        """Number of outputs of the classifier (``None`` when the entry does not say)."""
        return self.input.get("classes")

    def to_json(self):
        out = dict(self.__dict__)
        out["files"], out["pruned"] = [dict(f) for f in self.files], list(self.pruned)
        return out

    @classmethod
    def from_json(cls, doc):
        missing = [k for k in ("name", "task", "architecture", "dataset", "pattern", "sparsity", "metrics",
                               "recipe", "files", "source", "license") if k not in doc]
        if missing:
            raise ZooError(f"zoo index entry {doc.get('name', '?')!r} lacks fields {missing}")
        unknown = sorted(set(doc) - set(cls.__dataclass_fields__))
        if unknown:
            raise ZooError(f"zoo index entry {doc['name']!r} has unknown fields {unknown}")
        if doc["task"] not in TASKS:
            raise ZooError(f"zoo index entry {doc['name']!r}: task {doc['task']!r} is not one of {TASKS}")
        doc = dict(doc, files=tuple(dict(f) for f in doc["files"]), pruned=tuple(doc.get("pruned") or ()))
        return cls(**doc)


_CACHE = {}


def entries(path=None):
    """All entries of the index at ``path`` (default: the bundled one), in index order."""
    path = path or INDEX_PATH
    if path not in _CACHE:
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ZooError(f"the zoo index {path!r} cannot be read: {e}") from None
        if doc.get("format_version") != INDEX_VERSION:
            raise ZooError(f"the zoo index {path!r} has format_version {doc.get('format_version')!r}; "
                           f"this prunekit reads {INDEX_VERSION}")
        found = [Entry.from_json(e) for e in doc.get("entries", [])]
        names = [e.name for e in found]
        if len(set(names)) != len(names):
            raise ZooError(f"the zoo index {path!r} names an entry twice")
        _CACHE[path] = found
    return list(_CACHE[path])


def find(name):
    """The entry called ``name``; a :class:`ZooError` naming the closest names otherwise."""
    known = {e.name: e for e in entries()}
    if name in known:
        return known[name]
    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ZooError(f"no zoo entry {name!r}{hint} (`prunekit zoo list` shows all {len(known)})")
