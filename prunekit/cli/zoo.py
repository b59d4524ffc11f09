"""``prunekit zoo list | info NAME | fetch NAME | verify NAME``: the model zoo from the command line."""

import json

__all__ = ["add_parser", "run"]

TOLERANCE = 0.005  # verify fails when the measured metric is off by more than 0.5 points


def add_parser(sub):
    zoo = sub.add_parser("zoo", help="the sparse model zoo: list, info, fetch, verify")
    cmds = zoo.add_subparsers(dest="zoo_command", required=True)
    listing = cmds.add_parser("list", help="every entry: task, data set, pattern, sparsity, metric")
    listing.add_argument("--task", default=None, help="classification or detection")
    listing.add_argument("--json", action="store_true")
    info = cmds.add_parser("info", help="every field of one entry")
    info.add_argument("name")
    info.add_argument("--json", action="store_true")
    fetch = cmds.add_parser("fetch", help="a verified local copy of the entry's file; prints its path")
    fetch.add_argument("name")
    fetch.add_argument("--url", default=None, help="download from here (a directory URL or the file's URL) "
                       "instead of the package, the cache or $PRUNEKIT_ZOO_URL")
    verify = cmds.add_parser("verify", help="re-measure the entry's metric and sparsity (exit 1 when off)")
    verify.add_argument("name")
    verify.add_argument("--quick", action="store_true", help="only the test slice the index records "
                        "(its first images), against the metric recorded for that slice")
    verify.add_argument("--data-root", default=None, help="a directory with the data set's files")
    verify.add_argument("--url", default=None, help="as for fetch")


def _metric(entry):
    if not entry.metrics:
        return "-"
    key, value = next(iter(entry.metrics.items()))
    mark = "" if entry.metrics_origin == "measured here" else " *"
    return f"{key} {value:.4f}{mark}"


def _list(args):
    from prunekit import zoo
    found = zoo.list(args.task)
    if args.json:
        print(json.dumps([e.to_json() for e in found], indent=1))
        return 0
    print(f"{'name':<40} {'task':<14} {'dataset':<24} {'pattern':<12} {'sparsity':>8}  metric")
    for e in found:
        print(f"{e.name:<40} {e.task:<14} {e.dataset:<24} {e.pattern:<12} {e.sparsity:>8.4f}  {_metric(e)}")
    if any(e.metrics_origin != "measured here" for e in found):
        print("* published by the original tool, not reproduced here; its weights are supplied by the user")
    return 0


def _info(args):
    from prunekit import zoo
    entry = zoo.info(args.name)
    doc = entry.to_json()
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    for key, value in doc.items():
        if key == "files":
            for f in value:
                print(f"{'file':<15} {f['name']} ({f['size']:,} bytes, sha256 {f['sha256']}"
                      f"{', bundled' if f.get('bundled') else ''})")
        elif key == "pruned":
            print(f"{'pruned':<15} {', '.join(value) or '-'}")
        else:
            print(f"{key:<15} {value if not isinstance(value, dict) else json.dumps(value)}")
    print(f"{'transforms()':<15} {entry.transforms()!r}")
    return 0


def _fetch(args):
    from prunekit import zoo
    print(zoo.fetch(args.name, url=args.url))
    return 0


def _verify(args):
    from prunekit import zoo
    from prunekit.zoo.registry import MEASURED
    entry = zoo.info(args.name)
    if entry.metrics_origin != MEASURED:
        raise zoo.ZooError(f"{entry.name}: its figures were {entry.metrics_origin} (on {entry.dataset}, which "
                           "prunekit cannot load); there is nothing to re-measure here")
    graph = zoo.load_graph(entry.name, url=args.url)
    zeros, total = zoo.sparsity(graph, entry.pruned) if entry.pruned else (0, 0)
    sparsity = zeros / total if total else 0.0
    ok = sparsity == entry.sparsity
    print(f"{entry.name}: sparsity of {len(entry.pruned)} pruned tensors claimed {entry.sparsity:.6f}, "
          f"measured {sparsity:.6f} ({zeros:,} zeros of {total:,}){'' if ok else '  MISMATCH'}")
    from prunekit import ir
    model = ir.to_torch(graph)
    if args.quick:
        limit, claimed = entry.check["first"], entry.check
    else:
        limit, claimed = None, entry.metrics
    measured = zoo.evaluate(entry.name, limit=limit, data_root=args.data_root, model=model)
    for key, value in claimed.items():
        if key not in measured:
            continue
        off = abs(measured[key] - value)
        verdict = "OK" if off <= TOLERANCE else f"OFF by {100 * off:.2f} points (tolerance 0.5)"
        ok = ok and off <= TOLERANCE
        print(f"{entry.name}: {key} claimed {value:.4f}, measured {measured[key]:.4f} on "
              f"{measured['examples']} {entry.dataset} test images: {verdict}")
    return 0 if ok else 1


def run(args):
    """Run a ``prunekit zoo`` subcommand; returns the exit status."""
    return {"list": _list, "info": _info, "fetch": _fetch, "verify": _verify}[args.zoo_command](args)
