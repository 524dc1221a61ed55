"""The schema a plant engineer writes for a factory table: feature columns, target, task and how to read it.

`DataSchema` checks itself on construction and `SchemaError` lists every issue at once,
so a schema file is fixed in one pass rather than one error at a time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from fedmeta.common.data.connector.text import listing
from fedmeta.common.run_settings import TASK_KINDS
from fedmeta.common.validation import suggest

EXTRA_COLUMN_POLICIES = ("warn", "error", "ignore")
DECIMAL_MARKS = (".", ",")
_REQUIRED_KEYS = ("features", "target", "task")


class SchemaError(ValueError):
    """A schema that cannot be used; ``problems`` lists every issue found, each on its own line in ``str``."""

    def __init__(self, problems: Sequence[str], source: str = "schema") -> None:
        self.problems = list(problems)
        self.source = source
        if len(self.problems) == 1:
            message = f"{source}: {self.problems[0]}"
        else:
            message = f"{source} has {len(self.problems)} problems:\n" + "\n".join(f"- {p}" for p in self.problems)
        super().__init__(message)


def _column_name(key: str, value: object, problems: list[str], *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        kind = "a column name or null" if optional else "a column name"
        problems.append(f"{key!r} must be {kind} (a non-empty string), got {value!r}")
        return None
    return value.strip()


@dataclass(frozen=True)
class DataSchema:
    """What a factory's table holds: which columns are features, which is the target, and how to read it.

    ``classes`` fixes the label order for classification (label ``i`` is ``classes[i]``),
    so every factory of a federation maps labels identically even when one factory has
    not seen every class; without it the labels of each table are sorted (numerically
    when they are all numbers), which only agrees across factories that share all labels.
    Columns not named here are skipped with a warning (``extra_columns="warn"``, the default: real
    tables carry IDs, timestamps and other labels), a problem with ``"error"`` and skipped
    silently with ``"ignore"``. The ID, time and group columns are checked (present, no empty cells,
    unique IDs, readable times) and rows are ordered by time when one is named.

    ``window`` makes a federation of these tables train a window model (`common.data.connector.windows`):
    each input is the ``window`` consecutive rows of one group (unit, machine) up to a row, so the
    schema must name the group and time columns.
    """

    features: tuple[str, ...]
    target: str
    task: str
    id_column: str | None = None
    time_column: str | None = None
    group_column: str | None = None
    delimiter: str = ","
    decimal: str = "."
    extra_columns: str = "warn"
    classes: tuple[str, ...] | None = None
    window: int | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        features: tuple[str, ...] = ()
        if isinstance(self.features, str) or not isinstance(self.features, Sequence):
            problems.append(f"'features' must be a list of column names, got {self.features!r}")
        elif not self.features:
            problems.append("'features' is empty; name at least one feature column")
        else:
            names = [_column_name("features", f, problems) for f in self.features]
            features = tuple(n for n in names if n is not None)
            duplicates = sorted(n for n, count in Counter(features).items() if count > 1)
            if duplicates:
                problems.append(f"'features' lists {listing([repr(d) for d in duplicates])} more than once")
        target = _column_name("target", self.target, problems)
        if target is not None and target in features:
            problems.append(f"the target {target!r} is also listed in 'features'; a model must not see its target")
        if self.task not in TASK_KINDS:
            problems.append(f"'task' must be one of {', '.join(map(repr, TASK_KINDS))}, got {self.task!r}")
        roles = {}
        for key in ("id_column", "time_column", "group_column"):
            roles[key] = _column_name(key, getattr(self, key), problems, optional=True)
            if roles[key] is not None and roles[key] == target:
                problems.append(f"{key!r} {roles[key]!r} is also the target")
        if not isinstance(self.delimiter, str) or len(self.delimiter) != 1 or self.delimiter in '\r\n"':
            problems.append(f"'delimiter' must be one character such as ',' ';' or '\\t', got {self.delimiter!r}")
        if self.decimal not in DECIMAL_MARKS:
            problems.append(f"'decimal' must be '.' or ',', got {self.decimal!r}")
        elif self.decimal == self.delimiter:
            problems.append(
                f"'decimal' and 'delimiter' are both {self.decimal!r}; with a decimal comma use "
                "'delimiter': ';' (as European spreadsheet exports do)"
            )
        if self.extra_columns not in EXTRA_COLUMN_POLICIES:
            problems.append(f"'extra_columns' must be 'warn', 'error' or 'ignore', got {self.extra_columns!r}")
        classes = self._check_classes(problems)
        self._check_window(roles, problems)
        if problems:
            raise SchemaError(problems)
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "target", target)
        for key, value in roles.items():
            object.__setattr__(self, key, value)
        object.__setattr__(self, "classes", classes)

    def _check_window(self, roles: Mapping[str, str | None], problems: list[str]) -> None:
        if self.window is None:
            return
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 2:
            problems.append(f"'window' must be a whole number of rows, at least 2, got {self.window!r}")
        unnamed = [key for key in ("group_column", "time_column") if roles[key] is None]
        if unnamed:
            problems.append(f"'window' cuts windows from each unit's rows in time order, so name "
                            f"{' and '.join(map(repr, unnamed))} too")

    def _check_classes(self, problems: list[str]) -> tuple[str, ...] | None:
        if self.classes is None:
            return None
        if self.task != "classification":
            problems.append("'classes' only applies to task 'classification'")
            return None
        if isinstance(self.classes, str) or not isinstance(self.classes, Sequence):
            problems.append(f"'classes' must be a list of labels, got {self.classes!r}")
            return None
        bad = [c for c in self.classes if isinstance(c, bool) or not isinstance(c, str | int)]
        if bad:
            shown = listing([repr(b) for b in bad])
            problems.append(f"'classes' must hold labels as strings or integers, got {shown}")
            return None
        classes = tuple(str(c).strip() for c in self.classes)
        if len(classes) < 2:
            problems.append(f"'classes' needs at least 2 labels, got {list(classes)}")
        if "" in classes:
            problems.append("'classes' holds an empty label")
        duplicates = sorted(c for c, count in Counter(classes).items() if count > 1)
        if duplicates:
            problems.append(f"'classes' lists {listing([repr(d) for d in duplicates])} more than once")
        return classes

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the schema names, without repeats: features, target, ID, time, group."""
        named = (*self.features, self.target, self.id_column, self.time_column, self.group_column)
        return tuple(dict.fromkeys(c for c in named if c is not None))

    @classmethod
    def from_mapping(cls, data: object, source: str = "schema") -> DataSchema:
        """A schema from a JSON-like mapping; `SchemaError` lists unknown and missing keys and bad values."""
        if not isinstance(data, Mapping):
            got = type(data).__name__
            raise SchemaError([f"must be a JSON object with keys such as 'features', got {got}"], source)
        known = [f.name for f in fields(cls)]
        problems = []
        for key in data:
            if key not in known:
                hint = suggest(str(key), known)
                problems.append(
                    f"unknown key {key!r}"
                    + (f" (did you mean {hint!r}?)" if hint else "")
                    + f"; valid keys: {', '.join(known)}"
                )
        missing = [k for k in _REQUIRED_KEYS if k not in data]
        if missing:
            problems.append(f"missing required key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
        else:
            try:
                schema = cls(**{k: v for k, v in data.items() if k in known})
            except SchemaError as error:
                problems.extend(error.problems)
        if problems:
            raise SchemaError(problems, source)
        return schema

    @classmethod
    def from_json(cls, path: str | Path) -> DataSchema:
        """Read a schema file; a missing file or invalid JSON is a `SchemaError` naming the file."""
        path = Path(path)
        source = f"schema {str(path)!r}"
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise SchemaError(["file not found"], source) from None
        except IsADirectoryError:
            raise SchemaError(["is a folder, not a JSON file"], source) from None
        except UnicodeDecodeError:
            raise SchemaError(["is not UTF-8 text"], source) from None
        except OSError as error:
            raise SchemaError([f"cannot be read: {error.strerror}"], source) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            where = f"line {error.lineno}, column {error.colno}"
            raise SchemaError([f"is not valid JSON: {error.msg} ({where})"], source) from None
        return cls.from_mapping(data, source)
