"""Named components (models, losses, augmentations, competitions) and where they came from."""

from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from pydantic import BaseModel, ValidationError

from cpx.kernel.errors import ConfigError, CpxError, PluginError, UnknownComponent


class NoOptions(BaseModel, extra="forbid"):
    """A component that takes no options."""


@dataclass(frozen=True)
class Entry:
    """A registered component: kind, name, target (a factory, or a competition profile), its
    options model, a description and where it came from.
    """

    kind: str
    name: str
    target: Any  # a factory, or for competitions the profile itself
    options: type[BaseModel]
    description: str
    origin: str

    def parse_options(self, values: Any = None, *, where: str = "options") -> BaseModel:
        """Validate ``values`` against the component's options model.

        Errors name the full key path (``where`` + field), one line per problem.
        """
        if isinstance(values, self.options):
            return values
        try:
            parsed = self.options.model_validate(values or {})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix=where, model=self.options)) from None
        # a plugin's model may let inf or nan through, which a saved config turns into null: never
        bad = [f"{where}.{key}: {value} is not a finite number" for key, value in _numbers(parsed.model_dump())
               if isinstance(value, float) and not math.isfinite(value)]
        if bad:
            raise ConfigError("\n".join(bad))
        return parsed

    def create(self, options: Any = None, *args: Any, where: str = "options", **kwargs: Any) -> Any:
        """``target(options, *args, **kwargs)`` with ``options`` validated first.

        :raises ConfigError: options that do not validate, one line per field (``where`` + key).
        """
        return self.target(self.parse_options(options, where=where), *args, **kwargs)

    def accepts(self, keyword: str) -> bool:
        """Whether the factory takes the optional keyword argument ``keyword``."""
        try:
            return keyword in inspect.signature(self.target).parameters
        except (TypeError, ValueError):  # builtins and odd callables: assume not
            return False

    def options_schema(self) -> list[dict]:
        """Each option with its type, default and description (for `cpx plugins`)."""
        rows = []
        for key, f in self.options.model_fields.items():
            rows.append({
                "name": key,
                "type": getattr(f.annotation, "__name__", str(f.annotation)).replace("typing.", ""),
                "default": None if f.is_required() else f.get_default(call_default_factory=True),
                "description": f.description or "",
            })
        return rows


def _numbers(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{prefix}[{i}]")
    else:
        yield prefix, value


def _fields_at(model: Optional[type[BaseModel]], loc: tuple) -> list[str]:
    """The field names of the (nested) pydantic model holding the last part of ``loc``."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if model is not None else None
        sub = getattr(field, "annotation", None) if field is not None else None
        model = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def format_validation_error(exc: ValidationError, prefix: str = "", model: Optional[type[BaseModel]] = None) -> str:
    """One line per pydantic error: ``prefix.key.path: message (got value)``; an unknown field
    of ``model`` (or of a section of it) names the closest known ones."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        full = ".".join(p for p in (prefix, path) if p)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
            close = difflib.get_close_matches(str(err["loc"][-1]), _fields_at(model, tuple(err["loc"])), n=3, cutoff=0.7)
            if close:
                parent = full.rpartition(".")[0]
                msg += f"; did you mean {' or '.join(f'{parent}.{c}' if parent else c for c in close)}?"
        lines.append(f"{full}: {msg}" + (f" (got {err['input']!r})" if err["type"] != "extra_forbidden" and "input" in err and not isinstance(err["input"], dict) else ""))
    return "\n".join(lines)


class Registry:
    """Components of one kind by name; a name registered twice is an error naming both origins."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        # names whose definition could not be read (a profile file with an error): asking for
        # one raises its error, which names the file and field, instead of "unknown"
        self._broken: dict[str, tuple[CpxError, str]] = {}

    def register(self, name: str, target: Any, *, options: Optional[type[BaseModel]] = None,
                 description: str = "", origin: str = "?") -> None:
        """Add a component; a :class:`CpxError` as ``target`` records a definition that could
        not be read, raised whenever ``name`` is asked for.

        :raises PluginError: empty name, a name already taken (naming both origins), or options
            that are not a pydantic model class.
        """
        if not isinstance(name, str) or not name:
            raise PluginError(f"{origin}: a {self.kind} needs a non-empty string name")
        if name in self._entries or name in self._broken:
            first = self._entries[name].origin if name in self._entries else self._broken[name][1]
            raise PluginError(f"{self.kind} {name!r} is registered twice: by {first} and by {origin}")
        if isinstance(target, CpxError):
            self._broken[name] = (target, origin)
            return
        if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
            raise PluginError(f"{origin}: options for {self.kind} {name!r} must be a pydantic model class")
        self._entries[name] = Entry(self.kind, name, target, options or NoOptions,
                                    description or (getattr(target, "__doc__", "") or "").strip().split("\n")[0],
                                    origin)

    def get(self, name: str) -> Entry:
        """The entry called ``name``.

        :raises UnknownComponent: no such name; close names are suggested.
        """
        if name in self._broken:
            raise self._broken[name][0]
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(self._entries)) or 'none'}"
            raise UnknownComponent(f"unknown {self.kind} {name!r}{hint}") from None

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)

    def broken(self) -> list[tuple[str, str, str]]:
        """(name, origin, error) of every definition that could not be read."""
        return [(n, origin, str(err)) for n, (err, origin) in sorted(self._broken.items())]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
