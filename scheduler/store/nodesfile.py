"""Reading a fleet file (`scheduler nodes import FILE`, `scheduler simulate --nodes FILE`): YAML or JSON.

Why validate everything before touching the database: the import is all or
nothing, and an operator fixing a 500-node file wants every problem (up to a
limit) in one go, each naming the node by its position and name and the
field at fault, not one failure per run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from scheduler.config import parse_yaml, read_at_most
from scheduler.models import Node
from scheduler.store.errors import NodesFileError

MAX_REPORTED_PROBLEMS = 10
MAX_FILE_BYTES = 128 * 1024 * 1024
"""The largest fleet file read: 100,000 nodes take about 20 MB of YAML.

Why a bound: ``nodes import`` and ``simulate --nodes`` read the whole file,
and a path that is not a fleet file (``/dev/zero``, a multi-gigabyte log
given by mistake) grew the process until the machine ran out of memory,
then ended in a ``MemoryError`` traceback."""


def load_nodes_file(path: str | Path) -> list[Node]:
    """Parse and validate ``path``: ``{nodes: [...]}`` or a bare list, in YAML or JSON.

    Raises :class:`NodesFileError` naming, for the first problems found, the
    node (``nodes[3] (bm-004)``) and the field (``cpu: ...``). Duplicate
    names in one file are an error too: which one should win is not ours
    to guess.
    """
    path = Path(path)
    try:
        data = read_at_most(path, MAX_FILE_BYTES)
        if data is None:
            raise NodesFileError(
                f"{path}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB: not a fleet file?"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise NodesFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NodesFileError(f"{path}: cannot read: {exc}") from None
    return parse_nodes(text, source=str(path), json_only=path.suffix.lower() == ".json")


def parse_nodes(text: str, *, source: str = "<input>", json_only: bool = False) -> list[Node]:
    """:func:`load_nodes_file` on a string (``json_only`` for a ``.json`` file: better errors)."""
    data: Any
    try:
        data = json.loads(text) if json_only else parse_yaml(text)
    except json.JSONDecodeError as exc:
        raise NodesFileError(f"{source}: not valid JSON: {exc}") from None
    except RecursionError:
        raise NodesFileError(f"{source}: not valid JSON: nested too deeply") from None
    except yaml.YAMLError as exc:
        raise NodesFileError(f"{source}: not valid YAML: {_one_line(str(exc))}") from None
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"nodes"})
        if unknown:
            raise NodesFileError(
                f"{source}: unknown top-level key(s) {', '.join(map(str, unknown))}; expected `nodes:`"
            )
        data = data.get("nodes")
    if data is None:
        raise NodesFileError(f"{source}: no nodes (expected `nodes:` with a list)")
    if not isinstance(data, list):
        raise NodesFileError(f"{source}: `nodes` must be a list, got {type(data).__name__}")
    if not data:
        raise NodesFileError(f"{source}: the node list is empty")

    problems: list[str] = []
    nodes: list[Node] = []
    first_seen: dict[str, int] = {}
    for i, item in enumerate(data):
        label = _label(i, item)
        if not isinstance(item, dict):
            problems.append(f"{label}: expected a mapping of fields, got {type(item).__name__}")
            continue
        try:
            node = Node.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                field = ".".join(str(p) for p in err["loc"]) or "(node)"
                problems.append(f"{label}: {field}: {err['msg'].removeprefix('Value error, ')}")
            continue
        if node.name in first_seen:
            problems.append(f"{label}: duplicate name, first defined at nodes[{first_seen[node.name]}]")
            continue
        first_seen[node.name] = i
        nodes.append(node)
    if problems:
        shown = problems[:MAX_REPORTED_PROBLEMS]
        more = f" (first {len(shown)} shown)" if len(problems) > len(shown) else ""
        raise NodesFileError(
            f"{source}: {len(problems)} problem(s){more}, nothing imported:\n  " + "\n  ".join(shown)
        )
    return nodes


def _label(i: int, item: Any) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return f"nodes[{i}] ({name})" if isinstance(name, str) and name else f"nodes[{i}]"


def _one_line(text: str) -> str:
    return " ".join(text.split())
