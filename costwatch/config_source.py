"""The config file as hostile, secret-bearing input: YAML text in, plain data out, and pydantic's
``ValidationError`` back out as located messages that quote no secret.

``costwatch.config`` owns the models and calls these collaborators, one job each:

* ``Locator``: the line each key path was written on, and the ``file, line N: key.path: `` prefix.
* ``Budget``: bounds on node count, nesting depth and text after expanding aliases ("billion laughs"),
  checked while the tree is built, so an alias bomb stops before it costs memory.
* ``Interpolator``: ``${VAR}``, ``${VAR:-default}``, ``$$`` and the secret references ``${file:…}``,
  ``${ssm:…}``, ``${secretsmanager:…}`` (``costwatch.secrets``), expanded on parsed scalars in one pass.
  It is the provenance record: which key path each value came from, and the values themselves, kept only
  so that no message quotes them.
* ``YamlLoader``: composes the YAML node tree itself, so that it can record lines, charge the budget and
  interpolate scalars; a scalar PyYAML cannot construct (``2026-13-45``) is a located error.
* ``Explainer``: one line per key path for a ``ValidationError``.

Invariants:

* Every ``ConfigError`` raised here starts with the file name (``where(source, …)``).  It names the line
  whenever the error is about a node, or about a key path the file has written (or an ancestor of it); only
  a YAML error without a mark, the recursion guard and a check on the whole document (``(top level)``)
  have none.  A YAML syntax error or an unreadable scalar also names the column, and every error about one
  key or value names its dotted path (``notify.slack.token``, ``providers[0].type``).
* No message quotes a value that came from the environment or a secret reference: a pydantic message that
  contains one is replaced by what was expected, and the message names the variable or reference instead
  (``(value from ${SLACK_TOKEN}, not shown)``).  In a secret-looking field (token, password, secret, key,
  webhook, credential) a message that quotes the value, or is of a kind that may echo input, is replaced
  the same way.  Errors are raised ``from None`` so a ``--debug`` traceback does not carry PyYAML's or
  pydantic's text (which includes input values).
* A substituted value is never expanded again, and an aliased scalar is expanded (its secret fetched) once.
* This module never imports ``costwatch.config``: the root model is passed in, so there is no cycle.
"""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, SecretStr, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError, where
from .secrets import SecretError, SecretResolver

__all__ = [
    "MAX_CONFIG_BYTES",
    "Budget",
    "Explainer",
    "Interpolator",
    "KeyPath",
    "Locator",
    "YamlLoader",
    "allows_none",
    "dotted",
]

KeyPath = tuple[str | int, ...]
# ``$$``; a secret reference ``${file:…}``/``${ssm:…}``/``${secretsmanager:…}`` (``${ssm:-x}`` stays an env
# variable named ssm with a default); ``${VAR}``/``${VAR:-default}``; and a stray ``${`` (malformed)
_ENV_REF = re.compile(r"\$\$|\$\{(file|ssm|secretsmanager):(?!-)([^}]*)\}"
                      r"|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
_SECRETISH = re.compile(r"token|passw|secret|key|webhook|credential", re.IGNORECASE)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_NULL_TAG = "tag:yaml.org,2002:null"
_MAX_NODES = 200_000  # alias bombs ("billion laughs") stop here instead of eating memory
# ... and so does their text: 10,000 aliases of a 1 MB string are 10 GB once validators copy or scan them
_MAX_TEXT = 4_000_000
_MAX_DEPTH = 64  # YAML nesting; PyYAML's composer recurses, so thousands of "[" would be a RecursionError
MAX_CONFIG_BYTES = 4 * 1024 * 1024  # a config is a few KB; larger input is refused before parsing
# pydantic error types whose message may quote the input; replaced for secret or env-derived values
_MAY_ECHO = {"value_error", "assertion_error", "union_tag_invalid"}


def dotted(path: KeyPath) -> str:
    """``providers[0].type``: the key path as the user would write it, for every message."""
    out = ""
    for e in path:
        out += f"[{e}]" if isinstance(e, int) else (f".{e}" if out else e)
    return out or "(top level)"


# ------------------------------------------------------------------------------------------- where things are


class Locator:
    """The file's name and the line each key path was written on; shared by the loader (which records),
    and the interpolator and explainer (which point at lines after the tree is plain data)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: dict[KeyPath, int] = {}

    def record(self, path: KeyPath, node: Node) -> None:
        self.lines[path] = node.start_mark.line + 1

    def line_for(self, path: KeyPath) -> int | None:
        """The nearest written ancestor's line: pydantic reports keys the file lacks (a missing one)."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None

    def at(self, path: KeyPath) -> str:
        """The ``file, line N: key.path: `` prefix of a message about one key or value."""
        return f"{where(self.source, self.line_for(path))}{dotted(path)}: "


class Budget:
    """Node, depth and text limits, charged as the tree is built: aliases make the data far larger than
    the file, and PyYAML's composer recurses, so the limits must hold on the expanded tree."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._nodes = 0
        self._text = 0

    def node(self, node: Node, depth: int) -> None:
        """One more node, ``depth`` levels down."""
        self._nodes += 1
        if self._nodes > _MAX_NODES:
            raise ConfigError(f"{where(self.source, node.start_mark.line + 1)}config is too large "
                              "(too many nodes after expanding aliases)")
        if depth > _MAX_DEPTH:
            raise ConfigError(f"{where(self.source, node.start_mark.line + 1)}config is nested too deeply "
                              f"(more than {_MAX_DEPTH} levels)")

    def text(self, chars: int, node: Node) -> None:
        """``chars`` more characters of key or scalar text (after interpolation)."""
        self._text += chars
        if self._text > _MAX_TEXT:
            raise ConfigError(f"{where(self.source, node.start_mark.line + 1)}config is too large "
                              f"(more than {_MAX_TEXT:,} characters of text after expanding aliases)")

    def tree(self, root: Node, depth: int) -> None:
        """Charge a subtree PyYAML builds itself (``!!set``, ``!!omap``) against the same limits."""
        todo: list[tuple[Node, int]] = [(root, depth)]
        while todo:
            node, d = todo.pop()
            self.node(node, d)
            if isinstance(node, ScalarNode):
                self.text(len(node.value), node)
            elif isinstance(node, SequenceNode):
                todo.extend((n, d + 1) for n in node.value)
            elif isinstance(node, MappingNode):
                todo.extend((n, d + 1) for kv in node.value for n in kv)


# ------------------------------------------------------------------------------- ${...} and their provenance


class Interpolator:
    """Expands ``${...}`` in parsed scalars and remembers where each value came from, because the explainer
    must know which key paths (and which values) it may not quote."""

    def __init__(self, locator: Locator, env: Mapping[str, str], secrets: SecretResolver) -> None:
        self.locator = locator
        self.env = env
        self.secrets = secrets
        # path -> names of what filled it: env variables ("SLACK_TOKEN") and secret references ("ssm:/x")
        self.from_env: dict[KeyPath, list[str]] = {}
        # name -> value, only to check that no error message quotes it
        self.values: dict[str, str] = {}
        self.missing: list[tuple[str, KeyPath]] = []
        # one expansion per scalar node, however many aliases point at it: (result, names used, missing)
        self._expanded: dict[int, tuple[str, list[str], list[str]]] = {}

    def interpolate(self, value: str, path: KeyPath, node_id: int) -> str:
        """``value`` with its references expanded; ``node_id`` caches the work across aliases."""
        if "$" not in value:
            return value
        cached = self._expanded.get(node_id)
        if cached is None:
            cached = self._expanded[node_id] = self._expand(value, path)
        out, used, missing = cached
        if used:
            self.from_env[path] = used
        self.missing += [(var, path) for var in missing]
        return out

    def check_missing(self) -> None:
        """Every unset variable at once (after the whole file is read), so one run lists them all."""
        if self.missing:
            raise ConfigError("\n".join(
                f"{self.locator.at(path)}environment variable {var} "
                f"is not set (export it, or write ${{{var}:-default}})" for var, path in self.missing))

    def names_under(self, path: KeyPath) -> list[str]:
        """The variables and references that filled ``path`` or anything below it, first use first."""
        return list(dict.fromkeys(v for p, vs in self.from_env.items() if p[:len(path)] == path for v in vs))

    def _expand(self, value: str, path: KeyPath) -> tuple[str, list[str], list[str]]:
        """One pass over the scalar: substituted values are never expanded again."""
        used: list[str] = []
        missing: list[str] = []

        def sub(m: re.Match[str]) -> str:
            return self._substitute(m, path, used, missing)

        return _ENV_REF.sub(sub, value), used, missing

    def _substitute(self, m: re.Match[str], path: KeyPath, used: list[str], missing: list[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        scheme, ref, var, default = m.group(1), m.group(2), m.group(3), m.group(4)
        if scheme is not None:
            return self._secret(scheme, ref, path, used)
        if var is None:
            raise ConfigError(f"{self.locator.at(path)}malformed "
                              "${...} reference; use ${NAME} or ${NAME:-default}, ${file:PATH}, ${ssm:NAME} "
                              "or ${secretsmanager:NAME#key}, and $$ for a literal $")
        used.append(var)
        got = self.env.get(var)
        if got is not None:
            self.values[var] = got
        if got is not None and (got != "" or default is None):
            return got
        if default is not None:
            return default
        missing.append(var)
        return ""

    def _secret(self, scheme: str, ref: str, path: KeyPath, used: list[str]) -> str:
        name = f"{scheme}:{ref}"
        try:
            secret = self.secrets.resolve(scheme, ref).get_secret_value()
        except SecretError as e:
            raise ConfigError(f"{self.locator.at(path)}${{{name}}}: {e}") from None
        used.append(name)
        self.values[name] = secret
        return secret


# ------------------------------------------------------------------------------------------- YAML -> data


class YamlLoader:
    """YAML text to plain data (dicts, lists, scalars), composing the node tree itself so every key's line
    is recorded, the budget is charged on the expanded tree and scalars are interpolated once parsed."""

    def __init__(self, locator: Locator, interpolator: Interpolator) -> None:
        self.locator = locator
        self.source = locator.source
        self.interpolator = interpolator
        self.budget = Budget(locator.source)

    def load(self, text: str) -> Any:
        """The data, or ``None`` for an empty document; every failure is a located ``ConfigError``."""
        loader = self._open(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            data = self._build(loader, node, (), set())
        except RecursionError:
            raise ConfigError(f"{where(self.source)}config is nested too deeply (more than {_MAX_DEPTH} levels)"
                              ) from None
        except yaml.MarkedYAMLError as e:
            raise ConfigError(self._syntax_message(e)) from None
        except yaml.YAMLError as e:
            # ReaderError and friends: no mark, and str(e) may quote file content
            raise ConfigError(f"{where(self.source)}invalid YAML ({type(e).__name__})") from None
        finally:
            loader.dispose()
        self.interpolator.check_missing()
        return data

    def _open(self, text: str) -> yaml.SafeLoader:
        try:
            # the reader rejects control characters (NUL, ESC, lone surrogates) already in the constructor
            return yaml.SafeLoader(text)
        except yaml.reader.ReaderError as e:
            at = text.count("\n", 0, max(e.position, 0)) + 1
            raise ConfigError(f"{where(self.source, at)}invalid YAML: control character "
                              f"#x{int(e.character):04x} is not allowed (is this a text file?)") from None

    def _syntax_message(self, e: yaml.MarkedYAMLError) -> str:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        col = str(mark.column + 1) if mark is not None else None
        what = "; ".join(s for s in (e.context, e.problem) if s) or "syntax error"
        return f"{where(self.source, line, col)}invalid YAML: {what}"

    def _build(self, loader: yaml.SafeLoader, node: Node, path: KeyPath, stack: set[int]) -> Any:
        self.budget.node(node, len(path))
        if id(node) in stack:
            raise ConfigError(f"{where(self.source, node.start_mark.line + 1)}{dotted(path)}: "
                              "an alias refers to itself")
        if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
            return self._build_mapping(loader, node, path, stack | {id(node)})
        if isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
            return self._build_sequence(loader, node, path, stack | {id(node)})
        if isinstance(node, ScalarNode):
            return self._build_scalar(loader, node, path)
        # !!set, !!omap and other standard tags: let PyYAML build them (within the same bounds); pydantic
        # will reject the type where it does not fit
        self.budget.tree(node, len(path))
        return self._construct(loader, node, path, deep=True)

    def _build_sequence(self, loader: yaml.SafeLoader, node: SequenceNode, path: KeyPath,
                        stack: set[int]) -> list[Any]:
        out: list[Any] = []
        for i, item in enumerate(node.value):
            self.locator.record((*path, i), item)
            out.append(self._build(loader, item, (*path, i), stack))
        return out

    def _build_scalar(self, loader: yaml.SafeLoader, node: ScalarNode, path: KeyPath) -> Any:
        value = self._construct(loader, node, path)
        if isinstance(value, str):
            value = self.interpolator.interpolate(value, path, id(node))
        self.budget.text(len(value) if isinstance(value, str) else len(node.value), node)
        return value

    def _build_mapping(self, loader: yaml.SafeLoader, node: MappingNode, path: KeyPath,
                       stack: set[int]) -> dict[str, Any]:
        self._check_keys(node, path)
        loader.flatten_mapping(node)  # applies ``<<: *anchor``; explicit keys come last and win
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            # The raw text, not the constructed scalar: project ids like 012345678901 must stay strings.
            key = str(knode.value)
            self.budget.text(len(key), knode)
            child = (*path, key)
            self.locator.record(child, knode)
            out[key] = self._build(loader, vnode, child, stack)
        return out

    def _check_keys(self, node: MappingNode, path: KeyPath) -> None:
        """Keys as written (before merges): plain, non-empty and each once, or a located error."""
        seen: dict[str, int] = {}
        for knode, _ in node.value:
            line = knode.start_mark.line + 1
            if knode.tag == _MERGE_TAG:
                continue
            if not isinstance(knode, ScalarNode):
                raise ConfigError(f"{where(self.source, line)}{dotted(path)}: keys must be plain names, "
                                  "not lists or mappings")
            if knode.tag == _NULL_TAG or not str(knode.value).strip():
                raise ConfigError(f"{where(self.source, line)}{dotted(path)}: a key is empty or null (~); keys "
                                  "must be non-empty names (quote it if it really is the text)")
            if knode.value in seen:
                raise ConfigError(f"{where(self.source, line)}{dotted((*path, knode.value))}: duplicate key "
                                  f"(first defined on line {seen[knode.value]})")
            seen[knode.value] = line

    def _construct(self, loader: yaml.SafeLoader, node: Node, path: KeyPath, deep: bool = False) -> Any:
        """PyYAML's constructors raise ValueError/KeyError for scalars that match a type's pattern but not
        its range (``2026-13-45``, ``!!int abc``, ``!!bool maybe``, a 5000-digit int): report it here."""
        try:
            return loader.construct_object(node, deep=deep)
        except (ValueError, KeyError, TypeError, OverflowError):
            tag = str(node.tag).rsplit(":", 1)[-1]
            mark = node.start_mark
            raise ConfigError(f"{where(self.source, mark.line + 1, str(mark.column + 1))}{dotted(path)}: "
                              f"cannot be read as a YAML {tag} (malformed or out of range); quote it if it is "
                              "meant as text") from None


# --------------------------------------------------------------------------- pydantic errors -> messages


class Explainer:
    """Turns a ``ValidationError`` into one located line per key path, in file order, without quoting any
    value the provenance record marks as from the environment or a secret."""

    def __init__(self, locator: Locator, provenance: Interpolator, root: type[BaseModel],
                 provider_types: tuple[str, ...]) -> None:
        self.locator = locator
        self.provenance = provenance
        self.root = root
        self.provider_types = provider_types

    def explain(self, exc: ValidationError, data: dict[str, Any]) -> str:
        """The whole message: pydantic's ``loc`` mapped onto keys the file has, duplicates merged."""
        grouped: dict[KeyPath, list[str]] = {}
        for err in exc.errors(include_url=False, include_input=False):
            path = _data_path(err["loc"], data, err["type"])
            msg = self._message(err, path, data)
            if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
                path = (*path, "type")
            msgs = grouped.setdefault(path, [])
            if msg not in msgs:
                msgs.append(msg)
        rows = sorted(grouped.items(), key=lambda kv: (self.locator.line_for(kv[0]) or 0, dotted(kv[0])))
        return "\n".join(f"{self.locator.at(path)}{'; or '.join(msgs)}" for path, msgs in rows)

    def _message(self, err: Any, path: KeyPath, data: dict[str, Any]) -> str:
        kind = err["type"]
        if kind == "extra_forbidden":
            return _unknown_key_message(self.root, path, data)
        if kind == "missing":
            return "required key is missing"
        if kind in ("union_tag_not_found", "union_tag_invalid"):
            return self._provider_type_message(err, path)
        msg = str(err["msg"])
        if msg.startswith(("Value error, ", "Assertion failed, ")):
            msg = msg.split(", ", 1)[1]
        declared = _type_at(self.root, path, data)
        if isinstance(declared, type) and issubclass(declared, BaseModel):
            # a cross-field check from one of our validators; those never quote values
            return msg
        return self._redacted(msg, kind, path, data, declared)

    def _provider_type_message(self, err: Any, path: KeyPath) -> str:
        expected = "expected one of: " + ", ".join(repr(t) for t in self.provider_types)
        if err["type"] == "union_tag_not_found":
            return "missing 'type'; " + expected
        if (*path, "type") in self.provenance.from_env:
            return "unknown provider type (value from the environment, not shown); " + expected
        return f"unknown provider type {err.get('ctx', {}).get('tag')!r}; " + expected

    def _redacted(self, msg: str, kind: str, path: KeyPath, data: dict[str, Any], declared: Any) -> str:
        """``msg``, unless it could quote a secret or an environment value: then only what was expected."""
        env_vars = self.provenance.names_under(path)
        field = next((e for e in reversed(path) if isinstance(e, str)), "")
        # Belt and braces: any message that quotes the value (or any env value used here) is replaced.
        secretish = bool(_SECRETISH.search(field))
        values = [self.provenance.values.get(v) or "" for v in env_vars]
        here = _node_at(path, data)
        if secretish and isinstance(here, str | int | float):
            values.append(str(here))
        quoted = any(v and v in msg for v in values)
        if quoted or (secretish and kind in _MAY_ECHO):
            msg = f"invalid value; expected {_describe(declared)}"
        if env_vars:
            msg += " (value from ${" + "}, ${".join(env_vars) + "}, not shown)"
        return msg


# ------------------------------------------------------------------ declared types along a data path


def _data_path(loc: tuple[Any, ...], data: Any, kind: str) -> KeyPath:
    """Map pydantic's ``loc`` onto keys that exist in the file; it also contains discriminator tags
    (``files``) and union branch names (``list[str]``) that the user never wrote."""
    path: list[str | int] = []
    node = data
    for i, elem in enumerate(loc):
        found, child = _child(node, elem)
        if found:
            path.append(elem)
            node = child
        elif i == len(loc) - 1 and kind == "missing" and isinstance(elem, str | int):
            path.append(elem)
    return tuple(path)


def _unknown_key_message(root: type[BaseModel], path: KeyPath, data: dict[str, Any]) -> str:
    model = _unwrap(_type_at(root, path[:-1], data), _node_at(path[:-1], data))
    if not (isinstance(model, type) and issubclass(model, BaseModel)) or not path:
        return "unknown key"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(str(path[-1]), allowed, n=3, cutoff=0.6)
    if close:
        # ``budget: 10`` means monthly_budget, not budget_alerts: prefer a key whose type takes the value's shape
        is_list = isinstance(_node_at(path, data), list)
        fits = [k for k in close if _takes_list(model.model_fields[k].annotation) == is_list]
        return f"unknown key (did you mean {(fits or close)[0]!r}?)"
    return "unknown key; expected one of: " + ", ".join(allowed)


def _takes_list(tp: Any) -> bool:
    return get_origin(tp) is list or any(get_origin(a) is list for a in get_args(tp))


def _node_at(path: KeyPath, data: Any) -> Any:
    node = data
    for e in path:
        node = _child(node, e)[1]
    return node


def allows_none(tp: Any) -> bool:
    """Whether a declared type takes ``None`` (``X | None``, ``Optional[X]``, ``None`` itself)."""
    return tp is None or tp is type(None) or (_is_union(tp) and type(None) in get_args(tp))


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _unwrap(tp: Any, node: Any) -> Any:
    """Strip ``Annotated`` and ``| None``, and pick a discriminated-union member using the data's ``type``."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        if _is_union(tp):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
            tag = node.get("type") if isinstance(node, dict) else None
            for m in members:
                if (isinstance(m, type) and issubclass(m, BaseModel) and "type" in m.model_fields
                        and tag in get_args(m.model_fields["type"].annotation)):
                    return m
        return tp


def _type_at(root: type[BaseModel], path: KeyPath, data: Any) -> Any:
    """The declared type at a data path, used for suggestions and for "expected a string" messages."""
    tp: Any = root
    node = data
    for elem in path:
        tp = _unwrap(tp, node)
        origin = get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if not isinstance(elem, str) or elem not in tp.model_fields:
                return None
            tp = tp.model_fields[elem].annotation
        elif origin is list:
            tp = get_args(tp)[0]
        elif origin is dict:
            tp = get_args(tp)[1]
        else:
            return None
        node = _child(node, elem)[1]
    return _unwrap(tp, node)


def _child(node: Any, elem: Any) -> tuple[bool, Any]:
    """``node[elem]`` if the file really has it; bool keys and out-of-range indexes do not count."""
    if isinstance(node, dict) and isinstance(elem, str) and elem in node:
        return True, node[elem]
    if isinstance(node, list) and type(elem) is int and 0 <= elem < len(node):
        return True, node[elem]
    return False, None


def _describe(tp: Any) -> str:
    tp = _unwrap(tp, None)
    if _is_union(tp):
        return " or ".join(dict.fromkeys(_describe(a) for a in get_args(tp)))
    if tp is None:
        return "a valid value"
    if tp is type(None):
        return "null"
    if tp in (str, SecretStr):
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return "a list"
    if get_origin(tp) is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "a mapping"
    return "a valid value"
