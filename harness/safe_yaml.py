"""YAML for files a user hands us: bounded in size, nesting and alias expansion; duplicate keys refused.

PyYAML's safe loader already refuses arbitrary Python objects, but it still builds whatever the
text describes: a 1 KB "billion laughs" (aliases of aliases) is a few shared objects that every later
walk (validation, an error message, a JSON dump) expands in full; deep nesting overflows its
recursive composer; and a key given twice silently keeps the last value (a second `run:` block
resets every setting it does not repeat). Here the node graph is measured before any Python object
is constructed, so nothing huge ever exists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20
MAX_NODES = 100_000
MAX_DEPTH = 32
MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlError(ValueError):
    """Text that is not a bounded, well-formed YAML document; the message is one line."""


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


class _Loader(yaml.SafeLoader):
    """SafeLoader with a nesting limit while composing; duplicate keys and base-60 numbers refused
    while constructing."""

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlError(f"{_where(self.peek_event().start_mark)}nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: ScalarNode) -> int:
        self._refuse_base60(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: ScalarNode) -> float:
        self._refuse_base60(node)
        return super().construct_yaml_float(node)

    def _refuse_base60(self, node: ScalarNode) -> None:
        """YAML 1.1 reads 1:30 as the number 90; nobody writing a suite means that."""
        if ":" in node.value:
            raise YamlError(f"{_where(node.start_mark)}{node.value!r} would be read as a base-60 number; quote it if it is text")

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise YamlError(f"{_where(key_node.start_mark)}duplicate key {key!r} (the later value would silently replace the earlier one)")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: Node) -> None:
    """Refuse a document that is too large or too deep once every alias is expanded, without
    expanding it (sizes are memoised on shared nodes), and one whose alias sits inside its own anchor."""
    measured: dict[int, tuple[int, int]] = {}  # node -> (values, height)
    open_nodes: set[int] = set()

    def measure(node: Node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in open_nodes:
            raise YamlError(f"{_where(node.start_mark)}an alias refers to its own anchor (a recursive structure)")
        if key not in measured:
            if depth > MAX_DEPTH:
                raise YamlError(f"{_where(node.start_mark)}nested deeper than {MAX_DEPTH} levels once its aliases are resolved")
            open_nodes.add(key)
            children = node.value if isinstance(node, SequenceNode) else [n for pair in node.value for n in pair] if isinstance(node, MappingNode) else []
            parts = [measure(child, depth + 1) for child in children]
            open_nodes.discard(key)
            measured[key] = (min(MAX_NODES + 1, 1 + sum(n for n, _ in parts)), 1 + max((h for _, h in parts), default=0))
        values, height = measured[key]
        if depth + height - 1 > MAX_DEPTH:
            raise YamlError(f"{_where(node.start_mark)}nested deeper than {MAX_DEPTH} levels once its aliases are resolved")
        return values, height

    if measure(root, 1)[0] > MAX_NODES:
        raise YamlError(f"expands to more than {MAX_NODES:,} values once its aliases (*name) are resolved")


def _one_line(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        character = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        return f"character {exc.position + 1}: unacceptable character {character} ({exc.reason})"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"malformed YAML at {_where(mark)}{problem}"


def loads(text: str) -> Any:
    """The document in `text`, or YamlError naming the line and the problem."""
    if len(text) > MAX_BYTES:
        raise YamlError(f"longer than {MAX_BYTES:,} characters; a suite is a short file")
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlError(_one_line(exc)) from None
    except YamlError:
        raise
    except (RecursionError, ValueError, OverflowError) as exc:  # e.g. an integer literal of 5,000 digits
        raise YamlError(f"cannot read a value ({type(exc).__name__}: {str(exc).split(';')[0][:120]})") from None
    finally:
        if loader is not None:
            loader.dispose()


def read_text(path: Path) -> str:
    """A regular file's text as UTF-8 (a BOM is allowed), refused if larger than MAX_BYTES."""
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file" if path.exists() else "no such file"
        raise YamlError(f"cannot read suite ({what})")
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlError(f"larger than {MAX_BYTES:,} bytes; a suite is a short file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise YamlError(f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save the file as UTF-8") from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)
