"""YAML for untrusted files: PyYAML's safe loader (no Python objects) plus what it lets through.

Refused, with the file and the line: aliases (``*ref``: "billion laughs" documents expand into
exponentially large structures), nesting deeper than ``max_depth`` (the constructor recurses),
duplicate mapping keys (PyYAML keeps the last one silently, so ``request_id`` given twice would
pick one without telling), files larger than ``max_bytes``, and text that is not UTF-8. A scalar that
the safe constructor cannot build (an impossible date such as ``2026-02-30``, ``!!timestamp x``,
``!!int x``) is a clear error with its line, never a traceback from inside PyYAML.
"""

from __future__ import annotations

from pathlib import Path

from r2f.errors import R2FError


class UnsafeYAML(R2FError, ValueError):
    """The document is not acceptable; the message names the source and the line."""


def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_object(self, node, deep=False):
            try:
                return super().construct_object(node, deep=deep)
            except (UnsafeYAML, yaml.YAMLError):
                raise
            except Exception as exc:  # noqa: BLE001 - any constructor failure is the document's fault
                value = node.value if isinstance(node.value, str) else node.tag
                raise UnsafeYAML(f"line {node.start_mark.line + 1}: value {str(value)[:40]!r} cannot be read: "
                                 f"{exc}") from None

        def construct_mapping(self, node, deep=False):
            if not isinstance(node, yaml.MappingNode):  # e.g. ``!!set [1]``: a tag that needs a mapping
                raise UnsafeYAML(f"line {node.start_mark.line + 1}: {node.tag} needs a mapping, got "
                                 f"{node.id}")
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    dup = key in seen
                except TypeError:  # an unhashable key: the safe constructor reports it
                    break
                if dup:
                    raise UnsafeYAML(f"line {key_node.start_mark.line + 1}: key {str(key)[:40]!r} appears twice")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, Loader.construct_mapping)
    return Loader


def loads(text: str, source: str, max_depth: int = 20):
    """Parse ``text`` (from ``source``, for messages) or raise :class:`UnsafeYAML`."""
    import yaml

    depth = 0
    try:
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(ev, yaml.AliasEvent):
                raise UnsafeYAML(f"{source}: line {ev.start_mark.line + 1}: YAML aliases (*{ev.anchor}) are not "
                                 "accepted")
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > max_depth:
                    raise UnsafeYAML(f"{source}: line {ev.start_mark.line + 1}: nested deeper than {max_depth} levels")
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except UnsafeYAML as exc:
        msg = str(exc)
        raise UnsafeYAML(msg if msg.startswith(source) else f"{source}: {msg}") from None
    except yaml.YAMLError as exc:
        raise UnsafeYAML(f"{source}: not valid YAML/JSON: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a constructor run outside construct_object (PyYAML's generators)
        raise UnsafeYAML(f"{source}: cannot be read: {type(exc).__name__}: {exc}") from None


def load_file(path: str | Path, kind: str = "YAML", error: type[Exception] = UnsafeYAML, max_bytes: int = 1 << 20,
              max_depth: int = 20):
    """Read and parse a YAML/JSON file with the limits above. Whatever makes it unusable (missing,
    a folder instead of a ``kind`` file, over a limit, not valid YAML) raises ``error`` naming
    ``path`` as given, so each caller reports it with its own error class."""
    try:
        return _read(Path(path), max_bytes, max_depth)
    except FileNotFoundError as exc:
        raise error(f"{path}: file not found") from exc
    except IsADirectoryError as exc:
        raise error(f"{path}: is a folder, not a {kind} file") from exc
    except UnsafeYAML as exc:
        raise error(str(exc)) from None


def _read(path: Path, max_bytes: int, max_depth: int):
    """Size, encoding and NUL checks, then :func:`loads`; OS errors pass through."""
    size = path.stat().st_size
    if size > max_bytes:
        raise UnsafeYAML(f"{path}: {size} bytes; at most {max_bytes} are accepted")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise UnsafeYAML(f"{path}: line {line}: not valid UTF-8 (byte {exc.start})") from None
    if "\x00" in text:
        raise UnsafeYAML(f"{path}: line {text[:text.index(chr(0))].count(chr(10)) + 1}: contains a NUL character")
    return loads(text, str(path), max_depth)
