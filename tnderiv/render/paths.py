"""The legs as drawn: final paths from port to port, stub ends fanned out, and a label for each leg."""

from __future__ import annotations

from tnderiv.render.geometry import Box, Curve, Point, rounded
from tnderiv.render.labels import leg_label
from tnderiv.render.layout_state import STUB, LayoutState, dot_key, label_box, label_size
from tnderiv.render.leg_labels import dot_label, edge_label
from tnderiv.render.model import Leg, LegKind
from tnderiv.render.ports import Conn, assign_ports
from tnderiv.render.routing import Route
from tnderiv.render.stubs import Stub


def draw_legs(
    state: LayoutState, ends: dict[str, list[str]], routes: list[Route], stubs: list[Stub]
) -> tuple[Leg, ...]:
    rank = {leg: i for i, leg in enumerate(ends)}
    conns: dict[str, list[Conn]] = {}
    route_conns = []
    for route in routes:
        a, b = state.shapes[route.a].center, state.shapes[route.b].center
        ca = Conn(route.leg, route.apex or b, rank[route.leg])
        cb = Conn(route.leg, route.apex or a, rank[route.leg])
        conns.setdefault(route.a, []).append(ca)
        conns.setdefault(route.b, []).append(cb)
        route_conns.append((route, ca, cb))
    stub_conns = []
    for stub in stubs:
        c = state.shapes[stub.anchor].center
        conn = Conn(stub.leg, (c[0] + 100 * stub.direction[0], c[1] + 100 * stub.direction[1]), rank[stub.leg])
        conns.setdefault(stub.anchor, []).append(conn)
        stub_conns.append((stub, conn))
    assign_ports(state, conns)

    paths: dict[str, list[Curve]] = {leg: [] for leg in ends}
    for route, ca, cb in route_conns:
        assert ca.port is not None and cb.port is not None
        curve = Curve.line(ca.port, cb.port) if route.apex is None else Curve.through(ca.port, route.apex, cb.port)
        paths[route.leg].append(curve)
    stub_geometry = _fan_stubs(state, stub_conns)
    for stub, _conn in stub_conns:
        paths[stub.leg].append(stub_geometry[stub.leg][0])

    placed: list[Box] = [s.box.inflate(0.02) for s in state.shapes.values()]
    label_at: dict[str, tuple[Point, tuple[float, float]]] = {}
    for stub, _conn in stub_conns:
        _curve, box = stub_geometry[stub.leg]
        label_at[stub.leg] = (box.center, (box.width, box.height))
        placed.append(box)
    all_curves = [c for leg_paths in paths.values() for c in leg_paths]
    centers = [s.center for s in state.shapes.values()]
    middle = (
        (sum(c[0] for c in centers) / len(centers), sum(c[1] for c in centers) / len(centers)) if centers else (0, 0)
    )
    for leg in ends:
        if leg in label_at:
            continue
        size = label_size(leg)
        if dot_key(leg) in state.shapes:
            box = dot_label(state.shapes[dot_key(leg)], size, placed, all_curves)
        else:
            box = edge_label(paths[leg][0], size, placed, [c for c in all_curves if c is not paths[leg][0]], middle)
        label_at[leg] = (box.center, (box.width, box.height))
        placed.append(box)

    legs = []
    for leg, keys in ends.items():
        has_dot = dot_key(leg) in state.shapes
        kind = LegKind.HYPEREDGE if has_dot else LegKind.EDGE if len(keys) == 2 else LegKind.STUB
        center, size = label_at[leg]
        legs.append(
            Leg(
                name=leg,
                kind=kind,
                paths=tuple(paths[leg]),
                ends=tuple(keys) + ((dot_key(leg),) if has_dot else ()),
                label=leg_label(leg),
                label_center=(rounded(center[0]), rounded(center[1])),
                label_size=(rounded(size[0]), rounded(size[1])),
                open=state.is_open(leg),
            )
        )
    return tuple(legs)


def _fan_stubs(state: LayoutState, stub_conns: list[tuple[Stub, Conn]]) -> dict[str, tuple[Curve, Box]]:
    """Stub ends on one side of a node are spread so that their labels do not touch."""
    groups: dict[tuple[str, Point], list[tuple[Stub, Conn]]] = {}
    for stub, conn in stub_conns:
        groups.setdefault((stub.anchor, stub.direction), []).append((stub, conn))
    out: dict[str, tuple[Curve, Box]] = {}
    for (_anchor, direction), members in groups.items():
        sizes = []
        for stub, _conn in members:
            sizes.append(label_size(stub.leg))
        ports = [conn.port for _stub, conn in members]
        assert all(p is not None for p in ports)
        horizontal = abs(direction[1]) < 1e-9
        vertical = abs(direction[0]) < 1e-9
        if horizontal or vertical:
            # members are in port order; lay the label boxes side by side along the node's side
            along = [p[1] for p in ports] if horizontal else [p[0] for p in ports]  # type: ignore[index]
            extent = [s[1] + 0.04 for s in sizes] if horizontal else [s[0] + 0.1 for s in sizes]
            positions = _spread(along, extent, descending=horizontal)
        else:
            positions = [None] * len(members)
        for (stub, conn), size, position in zip(members, sizes, positions):
            port = conn.port
            assert port is not None
            end = (port[0] + STUB * direction[0], port[1] + STUB * direction[1])
            if position is not None:
                end = (end[0], position) if horizontal else (position, end[1])
            out[stub.leg] = (Curve.line(port, end), label_box(end, direction, size))
    return out


def _spread(along: list[float], extent: list[float], *, descending: bool) -> list[float]:
    """Positions near ``along`` (in order) keeping consecutive items ``extent`` apart, centred as a group."""
    sign = -1.0 if descending else 1.0
    positions = [along[0]]
    for j in range(1, len(along)):
        gap = (extent[j - 1] + extent[j]) / 2
        wanted = along[j]
        positions.append(wanted if sign * (wanted - positions[-1]) >= gap else positions[-1] + sign * gap)
    shift = sum(a - p for a, p in zip(along, positions)) / len(along)
    return [p + shift for p in positions]
