"""Bring lifecycle nodes up in order, bring them down in reverse and watch them, without ROS.

The ``lifecycle_manager`` node (DESIGN.md §3; nav2's is not available here) is a thin shell
around this module: :class:`LifecycleManagerConfig` is its parameters, and :func:`bring_up`,
:func:`bring_down` and :func:`not_active` are its behaviour, written against a
:class:`LifecycleClient` (the node's implementation calls each node's ``change_state`` and
``get_state`` services). Keeping the sequencing here lets the unit tests check every ordering
and failure path without processes, and the process tests check the services.

Why this order: every node is configured before any is activated (a GPU node that cannot load its
weights stops the bring-up before anything is live), and nodes are listed downstream first
(bridge, IDM, planner) so that no node produces output before its consumer listens. Bring-down
runs in reverse, all deactivations before any cleanup, so that the nodes stop producing first.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

from eva_idm.node_parameters import check_types, setting

# Primary lifecycle states and the transitions the manager uses (lifecycle_msgs' labels).
UNCONFIGURED, INACTIVE, ACTIVE, FINALIZED, UNKNOWN = "unconfigured", "inactive", "active", "finalized", "unknown"
CONFIGURE, ACTIVATE, DEACTIVATE, CLEANUP = "configure", "activate", "deactivate", "cleanup"
GOAL_STATES = {CONFIGURE: INACTIVE, ACTIVATE: ACTIVE, DEACTIVATE: INACTIVE, CLEANUP: UNCONFIGURED}
# A node name relative to the manager's namespace, optionally with namespaces of its own.
_NODE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


@dataclasses.dataclass(frozen=True)
class LifecycleManagerConfig:
    """Everything ``lifecycle_manager`` reads at start (``config/lifecycle_manager.yaml``)."""

    node_names: tuple[str, ...] = setting((), "managed lifecycle nodes, relative to the manager's namespace; "
                                              "configured in this order, then activated in this order, "
                                              "brought down in reverse")
    autostart: bool = setting(True, "bring the nodes up when the manager starts (otherwise wait for ~/startup)")
    service_timeout: float = setting(60.0, "how long to wait for a node's change_state and get_state services to "
                                           "appear [s, steady clock]")
    transition_timeout: float = setting(900.0, "how long one transition may take; configure loads models "
                                               "[s, steady clock]")
    state_timeout: float = setting(5.0, "a node that does not answer get_state within this is taken as lost "
                                        "[s, steady clock]")
    check_period: float = setting(1.0, "period of the state watch and of /diagnostics [s, steady clock]")
    discovery_settle: float = setting(1.0, "wait after a node's services appear before the first call; a response "
                                           "sent before the server has discovered the client is lost [s]")

    def __post_init__(self) -> None:
        check_types(self)
        if not self.node_names:
            raise ValueError("node_names: must name at least one lifecycle node, got []")
        for name in self.node_names:
            if not _NODE_NAME.fullmatch(name):
                raise ValueError(f"node_names: {name!r} is not a relative ROS node name")
        if len(set(self.node_names)) != len(self.node_names):
            raise ValueError(f"node_names: every node must be named once, got {list(self.node_names)}")
        for name in ("service_timeout", "transition_timeout", "state_timeout", "check_period"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"{name}: must be a finite number > 0 [s], got {value}")
        if not (math.isfinite(self.discovery_settle) and self.discovery_settle >= 0.0):
            raise ValueError(f"discovery_settle: must be a finite number >= 0 [s], got {self.discovery_settle}")


class TransitionError(RuntimeError):
    """A node did not make a transition (or did not tell its state); the message names both and why."""

    def __init__(self, node: str, transition: str, reason: str):
        super().__init__(f"{node}: {transition} failed: {reason}")
        self.node, self.transition, self.reason = node, transition, reason


class LifecycleClient(Protocol):
    """How the sequencing reaches the nodes; every failure is a :class:`TransitionError`."""

    def state(self, node: str) -> str:
        """The node's primary state (one of the state constants); raises if it does not answer."""

    def change_state(self, node: str, transition: str) -> None:
        """Make the node take ``transition``; raises unless it reports success."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a bring-up or bring-down did: ``ok``, a message naming what failed, the states it left."""

    ok: bool
    message: str
    states: Mapping[str, str]


Log = Callable[[str], None]


def bring_up(nodes: Sequence[str], client: LifecycleClient, log: Log) -> Outcome:
    """Configure every node in order, then activate every node in order; bring all down on a failure.

    Nodes already inactive or active are left as they are, so a repeated startup is harmless. On
    the first failure every node that answered is brought back to unconfigured (:func:`bring_down`)
    and the outcome names the node and the transition that failed.
    """
    states: dict[str, str] = {}
    try:
        for node in nodes:
            states[node] = client.state(node)
        for transition, source in ((CONFIGURE, UNCONFIGURED), (ACTIVATE, INACTIVE)):
            for node in nodes:
                if states[node] == source:
                    _change(client, node, transition, states, log)
                elif states[node] not in (GOAL_STATES[transition], ACTIVE):
                    raise TransitionError(node, transition, f"it is {states[node]}, not {source}")
    except TransitionError as failure:  # nodes that never told their state were never touched
        down = bring_down([node for node in nodes if node in states], client, log)
        return Outcome(False, f"startup failed: {failure}; {down.message}", down.states)
    return Outcome(True, f"{len(nodes)} nodes active: {', '.join(nodes)}", states)


def bring_down(nodes: Sequence[str], client: LifecycleClient, log: Log, *, to: str = UNCONFIGURED,
               skip: Collection[str] = ()) -> Outcome:
    """Deactivate every active node in reverse order, then (``to`` = unconfigured) clean them all up.

    Best effort: a node that does not answer or refuses is reported and the others are still
    brought down. ``skip`` names nodes left alone (a lost node is not asked again).
    """
    if to not in (INACTIVE, UNCONFIGURED):
        raise ValueError(f"to: expected {INACTIVE!r} or {UNCONFIGURED!r}, got {to!r}")
    order = [node for node in reversed(nodes) if node not in skip]
    states, problems = {}, []
    for node in order:
        try:
            states[node] = client.state(node)
        except TransitionError as failure:
            states[node] = UNKNOWN
            problems.append(str(failure))
    steps = [(DEACTIVATE, ACTIVE)] + ([(CLEANUP, INACTIVE)] if to == UNCONFIGURED else [])
    for transition, source in steps:
        for node in order:
            if states[node] != source:
                continue
            try:
                _change(client, node, transition, states, log)
            except TransitionError as failure:
                states[node] = UNKNOWN
                problems.append(str(failure))
    if problems:
        return Outcome(False, f"bring-down incomplete: {'; '.join(problems)}", states)
    done = ", ".join(f"{node} {state}" for node, state in states.items())
    return Outcome(True, f"brought down ({done})" if done else "nothing to bring down", states)


def not_active(nodes: Sequence[str], client: LifecycleClient) -> dict[str, str]:
    """Each node that is not active, with what is wrong (its state, or why it did not answer)."""
    problems = {}
    for node in nodes:
        try:
            state = client.state(node)
        except TransitionError as failure:
            problems[node] = f"it does not answer ({failure.reason})"
            continue
        if state != ACTIVE:
            problems[node] = f"it is {state}"
    return problems


def _change(client: LifecycleClient, node: str, transition: str, states: dict[str, str], log: Log) -> None:
    client.change_state(node, transition)
    states[node] = GOAL_STATES[transition]
    log(f"{node}: {transition} -> {states[node]}")
