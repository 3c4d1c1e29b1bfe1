"""A ``TrainingConfig`` from a TOML file and ``KEY=VALUE`` overrides, and back to TOML.

``overwatch run --config FILE --set governor.sensitivity=4 --print-config`` goes through here.
Keys are the config's field names, dotted for the nested groups (``ppo.lr``; in a file, the
``[ppo]`` table). Values take the field's type: integers, numbers, ``true``/``false``, strings,
lists of strings (a TOML array, or on the command line ``a,b``), and ``none`` for the fields that
may be unset (TOML has no null: there it is the string ``"none"``). Every error is a
``ConfigError`` with a one-line message naming the key.

Like ``config.py``, this module never imports torch.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import json
import textwrap
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec

from esper_engine.config import TrainingConfig
from esper_engine.config_checks import choices

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
NONE = "none"  # the spelling of "unset" for optional fields, on the command line and in TOML

TOML_HEADER = """\
# overwatch run configuration: every field of esper_engine.config.TrainingConfig.
# Use it with `overwatch run --config FILE`. Precedence, lowest first: the defaults, this file,
# the named flags (--n-envs, --epochs, ...), then each --set KEY=VALUE in the order given.
# A commented-out `key = none` is unset (TOML has no null); the string "none" unsets a field.
"""


class ConfigError(ValueError):
    """Bad configuration input; the message is one line that names the key."""


# --- the shape of the config ------------------------------------------------------------------


def _is_group(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _fields(struct_type: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(struct_type)}


def leaf_fields(
    struct_type: type[msgspec.Struct] = TrainingConfig, prefix: str = ""
) -> dict[str, Any]:
    """Every settable field as dotted path -> type, in declaration order, groups expanded."""
    leaves: dict[str, Any] = {}
    for name, tp in _fields(struct_type).items():
        if _is_group(tp):
            leaves.update(leaf_fields(tp, f"{prefix}{name}."))
        else:
            leaves[prefix + name] = tp
    return leaves


def _optional(tp: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def describe(tp: Any) -> str:
    """What a value of this type looks like, for error messages."""
    base, optional = _optional(tp)
    allowed = choices(base)
    if allowed is not None:
        text = f"one of {', '.join(allowed)}"
    elif base is bool:
        text = "true or false"
    elif base is int:
        text = "an integer"
    elif base is float:
        text = "a number"
    elif base is str:
        text = "a string"
    elif typing.get_origin(base) is tuple and _item_type(base) is int:
        text = "a list of integers (32,64 or [32, 64])"
    elif typing.get_origin(base) is tuple:
        text = 'a list of strings (a,b or ["a", "b"])'
    else:  # pragma: no cover - every field type is one of the above (test_config_io checks)
        text = repr(base)
    return f"{text} or {NONE}" if optional else text


def field_type(path: str, source: str) -> Any:
    """The type of the leaf at a dotted path; ConfigError (with a suggestion) if there is none."""
    leaves = leaf_fields()
    if path in leaves:
        return leaves[path]
    groups = {name for name, tp in _fields(TrainingConfig).items() if _is_group(tp)}
    if path in groups:
        example = next(p for p in leaves if p.startswith(path + "."))
        raise ConfigError(
            f"{source}: {path} is a group of settings; set one of them, e.g. {example}"
        )
    raise ConfigError(f"{source}: unknown key {path!r}{_suggestion(path, list(leaves))}")


def _suggestion(path: str, known: list[str]) -> str:
    leaf = path.rsplit(".", 1)[-1]
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == leaf]  # e.g. an old flat name
    close = same_leaf or difflib.get_close_matches(path, known, n=1, cutoff=0.6)
    if not close:  # a typo in the last part of a key put in the wrong group
        leaves = {k.rsplit(".", 1)[-1]: k for k in known}
        close = [leaves[m] for m in difflib.get_close_matches(leaf, list(leaves), n=1)]
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- setting values ---------------------------------------------------------------------------


def set_value(config: TrainingConfig, path: str, value: Any) -> TrainingConfig:
    """A copy of ``config`` with the field at a dotted path replaced (value already typed)."""
    return _replace(config, path.split("."), value)


def _replace(struct: msgspec.Struct, parts: list[str], value: Any) -> Any:
    head, *rest = parts
    if rest:
        value = _replace(getattr(struct, head), rest, value)
    return msgspec.structs.replace(struct, **{head: value})


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``where`` names the key in the message: "--set ppo.lr", "config run.toml: ppo.lr"."""
    _, optional = _optional(tp)
    if optional and isinstance(value, str) and value.strip().lower() == NONE:
        return None
    try:
        return msgspec.convert(value, tp)
    except msgspec.ValidationError:
        if choices(tp) is not None:  # what TrainingConfig.validate says of a bad choice
            raise ConfigError(f"{where} must be {describe(tp)}, got {value!r}") from None
        raise ConfigError(f"{where}: expected {describe(tp)}, got {value!r}") from None


def parse_text(text: str, tp: Any, where: str) -> Any:
    """A command-line value, read as the field's type."""
    base, optional = _optional(tp)
    stripped = text.strip()
    if optional and stripped.lower() == NONE:
        return None
    bad = ConfigError(f"{where}: expected {describe(tp)}, got {text!r}")
    value: Any
    if base is bool:
        if stripped.lower() not in _TRUE | _FALSE:
            raise bad
        value = stripped.lower() in _TRUE
    elif base is int:
        try:
            value = int(stripped)
        except ValueError:
            raise bad from None
    elif base is float:
        try:
            value = float(stripped)
        except ValueError:
            raise bad from None
    elif typing.get_origin(base) is tuple:
        value = _parse_list(stripped, bad)
        if _item_type(base) is int and not stripped.startswith("["):
            value = _int_items(value, bad)
    else:
        value = text
    return _convert(value, tp, where)


def _item_type(tp: Any) -> Any:
    """The item type of a ``tuple[X, ...]`` field."""
    return typing.get_args(tp)[0]


def _int_items(items: list[Any], bad: ConfigError) -> list[int]:
    try:
        return [int(item) for item in items]
    except ValueError:
        raise bad from None


def _parse_list(text: str, bad: ConfigError) -> list[Any]:
    if text.startswith("["):  # a TOML array
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            raise bad from None
    return [item.strip() for item in text.split(",") if item.strip()]


def apply_set(config: TrainingConfig, item: str) -> TrainingConfig:
    """Apply one ``--set KEY=VALUE``."""
    source = f"--set {item}"
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects KEY=VALUE (e.g. governor.sensitivity=4), got {item!r}")
    path = key.strip()
    value = parse_text(text, field_type(path, source), f"--set {path}")
    return set_value(config, path, value)


# --- TOML files -------------------------------------------------------------------------------


def load_toml(path: str | Path) -> dict[str, Any]:
    """The file's tables; ConfigError if it cannot be read or is not TOML."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: invalid TOML: {exc}") from None


def apply_table(config: TrainingConfig, table: Mapping[str, Any], source: str) -> TrainingConfig:
    """Apply a (nested) table of settings, e.g. what ``load_toml`` read."""
    for path, value in _flatten(table, TrainingConfig, "", source):
        tp = field_type(path, source)
        config = set_value(config, path, _convert(value, tp, f"{source}: {path}"))
    return config


def _flatten(
    table: Mapping[str, Any], struct_type: type[msgspec.Struct], prefix: str, source: str
) -> Iterator[tuple[str, Any]]:
    fields = _fields(struct_type)
    for key, value in table.items():
        path = prefix + key
        tp = fields.get(key)
        if tp is None:  # unknown: name it (an unknown table by its first key) and suggest
            while isinstance(value, dict) and value:
                key, value = next(iter(value.items()))
                path = f"{path}.{key}"
            field_type(path, source)  # raises
        if _is_group(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {path} is a group of settings: write it as [{path}]")
            yield from _flatten(value, tp, path + ".", source)
        elif isinstance(value, dict):
            raise ConfigError(f"{source}: {path}: expected {describe(tp)}, got a table")
        else:
            yield path, value


def to_toml(config: TrainingConfig) -> str:
    """The config as TOML that ``load_toml`` + ``apply_table`` read back to an equal config."""
    lines = [TOML_HEADER]
    _emit(config, "", lines)
    return "\n".join(lines).rstrip() + "\n"


def _emit(struct: msgspec.Struct, table: str, lines: list[str]) -> None:
    docs = field_docs(type(struct))
    defaults = {f.name: f.default for f in msgspec.structs.fields(struct)}
    groups = []
    for name, tp in _fields(type(struct)).items():
        if _is_group(tp):
            groups.append(name)
            continue
        lines.extend(_comment(docs.get(name, "")))
        value = getattr(struct, name)
        if value is None and defaults[name] is None:
            lines.append(f"# {name} = {NONE}")
        else:
            lines.append(f"{name} = {_toml_value(value)}")
        lines.append("")
    for name in groups:
        child = f"{table}.{name}" if table else name
        lines.extend(_comment(docs.get(name, "")))
        lines.append(f"[{child}]")
        _emit(getattr(struct, name), child, lines)


def _comment(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.splitlines()]


def _toml_value(value: Any) -> str:
    if value is None:
        return json.dumps(NONE)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # Python's float repr (1e-05, inf, 0.5) is valid TOML
    if isinstance(value, str):
        # JSON escapes are TOML basic-string escapes; TOML also forbids a raw DEL.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as TOML")


@functools.cache
def field_docs(struct_type: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), by name."""
    try:
        source = textwrap.dedent(inspect.getsource(struct_type))
    except (OSError, TypeError):  # no source (a frozen app): the TOML goes without comments
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs = {}
    for statement, following in zip(body, body[1:], strict=False):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[statement.target.id] = inspect.cleandoc(following.value.value)
    return docs
