"""YAML as dfer reads it (config files, presets, ``--set`` values, run configs, training counts): PyYAML's safe
loader (no Python objects: ``!!python/object`` is refused), with a bound on what aliases can expand to.

A YAML alias (``*a``) repeats the node its anchor (``&a``) names. Loaded, the repeats share one object, so a
600-byte document of nested aliases (a "billion laughs") is small in memory, until anything walks it as a tree:
validating it, printing it or quoting it in an error message touches every repeat, billions of them. So the
document's node graph is measured before anything is built from it: the number of values it holds once every
alias is expanded (each shared node counted as often as it is reached) must stay under :data:`MAX_VALUES`, and an
alias that contains itself is refused. The count runs over the composed nodes with a memo, so measuring costs
time in the size of the text, not of the expansion.
"""

from __future__ import annotations

from typing import Any

import yaml

from pipeline.core.errors import ConfigError, DferError, excerpt

MAX_VALUES = 100_000
"""Values (scalars, lists, mappings) a YAML document may hold with its aliases expanded."""
MAX_BYTES = 10 << 20
"""A config, preset or counts file larger than this is refused unread (they are a few KB)."""


def _expanded_size(node: yaml.Node, memo: dict[int, int], open_nodes: set[int], source: str,
                   error: type[DferError]) -> int:
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_nodes:
        raise error(f"{source}: a YAML alias refers to a node that contains it (a recursive document); "
                    "write the values out")
    open_nodes.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo, open_nodes, source, error)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo, open_nodes, source, error) + _expanded_size(v, memo, open_nodes, source, error)
    open_nodes.discard(key)
    if size > MAX_VALUES:
        raise error(f"{source}: its YAML aliases expand to more than {MAX_VALUES:,} values (nested aliases, a "
                    "'billion laughs' document?); a dfer config holds a few hundred")
    memo[key] = size
    return size


def compose_yaml(text: str, source: str, error: type[DferError] = ConfigError) -> yaml.Node | None:
    """The node tree of the single YAML document in ``text`` (for readers that name lines), checked like
    :func:`load_yaml`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded_size(node, {}, set(), source, error)
        return node
    except yaml.YAMLError as exc:
        raise error(f"{source}: not valid YAML: {excerpt(str(exc), 600)}") from None
    except RecursionError:
        raise error(f"{source}: its YAML is nested too deeply to read") from None
    finally:
        loader.dispose()


def load_yaml(text: str, source: str, error: type[DferError] = ConfigError) -> Any:
    """The single YAML document in ``text`` (None when empty). ``source`` names it in errors (a file, ``--set``);
    ``error`` is the :class:`DferError` raised for a document that is not valid YAML, has more than one document,
    or whose aliases expand too far. The message quotes a bounded excerpt of the text, never all of it."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set(), source, error)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise error(f"{source} is not valid YAML: {excerpt(str(exc), 600)}") from None
    except RecursionError:
        raise error(f"{source}: its YAML is nested too deeply to read") from None
    finally:
        loader.dispose()
