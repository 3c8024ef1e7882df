"""Helpers for the deployment tests: finding helm and kubectl, rendering, parsing.

Kept apart from ``test_deploy.py`` so that the tests read as statements about
the chart, the manifests and the image, and so that the small parsers here
(Dockerfile, .dockerignore) can be reasoned about on their own.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DIR = REPO_ROOT / "deploy"
CHART_DIR = DEPLOY_DIR / "helm" / "virtflow-scheduler"
K8S_DIR = DEPLOY_DIR / "k8s"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"
DOCKERIGNORE = DEPLOY_DIR / "Dockerfile.dockerignore"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-k8s-tools.sh"
LOCAL_TOOLS = REPO_ROOT / ".tools" / "bin"

# The Kubernetes minor version the manifests are validated against: the one
# the bundled helm and kubectl are built for, and one kubernetes-validate ships.
K8S_VERSION = "1.35"

# Generous per-command limit: helm and kubectl answer in well under a second,
# so a hang is a bug worth a clear failure rather than the suite's timeout.
COMMAND_TIMEOUT = 60


def find_tool(name: str) -> Path | None:
    """``$<NAME>_BIN``, else ``.tools/bin/<name>``, else ``<name>`` on PATH.

    The repository copy wins over PATH because PATH may hold other versions
    (helm 3, an old kubectl) whose messages and behaviour differ.
    """
    explicit = os.environ.get(f"{name.upper()}_BIN")
    if explicit:
        path = Path(explicit)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    local = LOCAL_TOOLS / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def run(
    cmd: list[str | Path],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = COMMAND_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; never raises on a non-zero exit."""
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def load_docs(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a multi-document stream."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def ident(obj: dict[str, Any]) -> str:
    """``Kind/name`` for messages."""
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict[str, Any]], kind: str, *, hook: bool | None = False) -> dict[str, Any]:
    """The single object of ``kind``; ``hook`` selects Helm hooks (True), non-hooks (False) or both."""
    found = [o for o in by_kind(objs, kind) if hook is None or is_hook(o) == hook]
    assert len(found) == 1, f"expected one {kind} (hook={hook}), found {[ident(o) for o in found]}"
    return found[0]


def is_hook(obj: dict[str, Any]) -> bool:
    return "helm.sh/hook" in (obj.get("metadata", {}).get("annotations") or {})


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(owner, pod spec) for every workload that runs pods."""
    out = []
    for obj in objs:
        if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            out.append((ident(obj), obj["spec"]["template"]["spec"]))
        elif obj.get("kind") == "CronJob":
            out.append((ident(obj), obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return out


def env_map(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name."""
    return {e["name"]: e for e in container.get("env", [])}


# ---------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    """One Dockerfile instruction with its ``--flags`` split off."""

    cmd: str
    args: str
    flags: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD/HEALTHCHECK CMD, else None."""
        import json

        text = self.args
        if self.cmd == "HEALTHCHECK":
            text = re.sub(r"^(--\S+\s+)*CMD\s+", "", text)
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def of(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def resolve(self, text: str) -> str:
        """``text`` with ``${ARG}``/``$ARG`` replaced by the global ARG defaults."""

        def sub(m: re.Match[str]) -> str:
            return self.global_args.get(m.group(1) or m.group(2), m.group(0))

        return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, text)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions joined across backslash continuations, comments dropped."""
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        out.append((start, " ".join(p for p in buf if p)))
        buf = []
    if buf:
        out.append((start, " ".join(buf)))
    return out


def parse_dockerfile(text: str) -> Dockerfile:
    """A small Dockerfile parser: enough to check stages, users and commands."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, logical in _logical_lines(text):
        cmd, _, rest = logical.partition(" ")
        cmd = cmd.upper()
        rest = rest.strip()
        flags: dict[str, str] = {}
        while rest.startswith("--") and cmd not in ("HEALTHCHECK",):
            token, _, rest = rest.partition(" ")
            key, _, value = token[2:].partition("=")
            flags[key] = value
            rest = rest.strip()
        if cmd == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name, instructions=[]))
        elif cmd == "ARG" and not stages:
            key, _, value = rest.partition("=")
            global_args[key.strip()] = value.strip().strip('"')
        elif stages:
            stages[-1].instructions.append(Instruction(cmd=cmd, args=rest, flags=flags, line=line))
    return Dockerfile(global_args=global_args, stages=stages)


def shell_words(args: str) -> list[str]:
    """The words of a shell-form RUN, for looking for package names."""
    try:
        return shlex.split(args)
    except ValueError:
        return args.split()


# -------------------------------------------------------------- .dockerignore


def dockerignore_patterns(text: str) -> list[str]:
    return [p.strip() for p in text.splitlines() if p.strip() and not p.strip().startswith("#")]


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether ``path`` (relative, with /) is left out of the build context.

    Docker's rule: the last pattern that matches the path or one of its parent
    directories decides; ``!`` re-includes; ``**`` matches any number of
    directories.
    """
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        regex = _glob_to_regex(pat)
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Docker's globs: ``*``, ``?`` and ``[...]`` stay within a path segment, ``**`` crosses them."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith(("!", "^")) else body
            out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))
