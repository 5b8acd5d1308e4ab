"""Canonical form of a diagram: one labelled graph feeds a fast WL hash and an exact isomorphism check."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

import networkx as nx
from networkx.algorithms import isomorphism

from tnderiv.ir.nodes import Node, NodeKind


class Network(Protocol):
    """What the canonical form reads of a ``Diagram`` (a protocol, so ``diagram`` can import this module)."""

    nodes: tuple[Node, ...]
    open_legs: tuple[str, ...]
    sizes: Mapping[str, Any]
    coefficient: Any
    open_groups: tuple[int, ...] | None


def diagram_graph(diagram: Network) -> nx.Graph:
    """Bipartite graph: tensor nodes and leg nodes; summed legs carry no name, open legs their position."""
    graph = nx.Graph()
    open_pos = {leg: i for i, leg in enumerate(diagram.open_legs)}
    graph.graph["label"] = f"{diagram.coefficient}|{diagram.open_groups}"
    for leg, size in diagram.sizes.items():
        role = f"open{open_pos[leg]}:{leg}" if leg in open_pos else "summed"
        graph.add_node(("leg", leg), label=_ascii(f"{role}|{size}"))
    for index, node in enumerate(diagram.nodes):
        graph.add_node(("node", index), label=_ascii(node.label()))
        symmetric = node.kind in (NodeKind.DELTA, NodeKind.ONES)
        for axis, leg in enumerate(node.legs):
            graph.add_edge(("node", index), ("leg", leg), label="*" if symmetric else str(axis))
    return graph


def _ascii(label: str) -> str:
    # networkx's WL hash encodes labels as ASCII; escaping keeps labels like "Π̄" or "g·c_out" distinct
    return label.encode("unicode_escape").decode("ascii")


def diagram_hash(diagram: Network) -> str:
    """Weisfeiler–Lehman hash of the diagram's graph combined with its global labels."""
    graph = diagram_graph(diagram)
    wl = nx.weisfeiler_lehman_graph_hash(graph, node_attr="label", edge_attr="label", iterations=4)
    return hashlib.blake2b(f"{wl}|{graph.graph['label']}".encode(), digest_size=16).hexdigest()


def isomorphic(a: Network, b: Network) -> bool:
    """Exact check that two diagrams differ only by the names of summed legs and node order."""
    ga, gb = diagram_graph(a), diagram_graph(b)
    if ga.graph["label"] != gb.graph["label"]:
        return False
    return nx.is_isomorphic(
        ga,
        gb,
        node_match=isomorphism.categorical_node_match("label", None),
        edge_match=isomorphism.categorical_edge_match("label", None),
    )
