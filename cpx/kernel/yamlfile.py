"""The one YAML reader for files people write (recipes, ``cpx.yaml``, competition profiles,
bundles): PyYAML's safe loader, except that a key given twice in one mapping is an error.

PyYAML keeps the last of two equal keys without a word, so a second ``train:`` block silently
dropped the first one's ``epochs: 1``; here it is refused, naming the key and both lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cpx.kernel.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding one key twice."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)  # merges (<<) may repeat keys on purpose: they are resolved first
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: let the normal constructor say so
            continue
        line = key_node.start_mark.line + 1
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (lines {first} and {line}); keep one", key_node.start_mark)
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> Any:
    """The data of YAML ``text``; ``source`` (a file name) starts every error message.

    :raises ConfigError: invalid YAML (with its line) or a key repeated in one mapping (with
        both lines), in one line.
    """
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or ""
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}:" if mark is not None and "appears twice" not in problem else ""
        raise ConfigError(f"{source}:{where} {problem or 'not valid YAML'}".replace(":  ", ": ")) from None


def read_yaml(path: Path) -> Any:
    """:func:`parse_yaml` of a file.

    :raises ConfigError: unreadable (one line naming the file), invalid YAML or a repeated key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    return parse_yaml(text, str(path))
