"""Load a YAML file into a pydantic model; errors name the file, the line and what is wrong."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tierflow_common.exceptions import ConfigError

M = TypeVar("M", bound=BaseModel)


def line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """Follow a pydantic error location through the YAML node tree to a 1-based line."""
    return position_of(node, loc)[0]


def position_of(
    node: yaml.Node | None, loc: tuple[int | str, ...]
) -> tuple[int | None, int | None]:
    """Follow a pydantic error location through the YAML node tree to a 1-based (line,
    column): of the deepest node the location reaches."""
    if node is None:
        return None, None
    line, column = node.start_mark.line + 1, node.start_mark.column + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                break
            node = match
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            break
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
    return line, column


def load_yaml_model(path: Path, model: type[M]) -> M:
    return load_yaml_model_with_nodes(path, model)[0]


def load_yaml_model_with_nodes(path: Path, model: type[M]) -> tuple[M, yaml.Node | None]:
    """Like load_yaml_model, also returning the YAML node tree for later line lookups."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_yaml_model(text, str(path), model)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a YAML document: where (1-based line and column, the dotted path
    of the key) and what."""

    line: int | None
    column: int | None
    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.line or '?'}: {self.location}: {self.message}"


class ConfigProblems(ConfigError):
    """A document that does not validate, with each problem's position."""

    def __init__(self, origin: str, problems: list[Problem], summary: str | None = None) -> None:
        self.origin = origin
        self.problems = problems
        text = summary or "invalid configuration:\n  " + "\n  ".join(
            f"{origin}:{p}" for p in problems
        )
        super().__init__(text)


def parse_yaml_model(text: str, origin: str, model: type[M]) -> tuple[M, yaml.Node | None]:
    """`text` (a YAML document named `origin` in messages) validated as `model`, and its node
    tree; ConfigProblems names line, column and problem of everything wrong."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        reason = f"invalid YAML: {getattr(exc, 'problem', None) or exc}"
        where = f"{origin}:{line}" if line is not None else origin
        raise ConfigProblems(
            origin, [Problem(line, column, "(document)", reason)], f"{where}: {reason}"
        ) from exc
    if data is not None and not isinstance(data, dict):
        raise ConfigProblems(origin, [Problem(1, 1, "(document)", "must be a mapping")])
    try:
        return model.model_validate(data if data is not None else {}), root
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            line, column = position_of(root, loc)
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            problems.append(Problem(line, column, dotted, err["msg"]))
        raise ConfigProblems(origin, problems) from exc
