"""The per-card gauges (``metrics.CardText``) read exactly as prometheus_client writes them,
after every kind of node change, from their per-node cache."""

from __future__ import annotations

from prometheus_client import generate_latest

from flexai_core.model import Allocation, Card, NodeInventory, Slice
from flexai_sched.metrics import CardSamples, CardText, Metrics
from flexai_sched.state import ClusterState

from .fixtures import node


def reference(state: ClusterState) -> bytes:
    return CardSamples(state).render()


def test_card_text_is_what_prometheus_client_writes_after_every_change() -> None:
    state = ClusterState()
    odd = NodeInventory(
        'we"ird\\node\nname',
        (Card(0, 'GPU-"q"\\x', "NVIDIA H200 \u00e9", 143771), Card(3, "GPU-b", "A100", 40960, 7)),
    )
    for inv in (node("n1", 2), node("n2", 8), odd):
        state.upsert_node(inv)
    text = CardText(state)
    assert text.render() == reference(state)
    state.observe(Allocation.build("ns", "p", "uid-p", "n2", (Slice("m", 5, "GPU-n2-5", 30, 4096),)))
    assert text.render() == reference(state)  # a node's usage changed: its lines again
    state.set_host_capacity("n2", 8000, 1024)  # host only: the cached lines stay right
    state.upsert_node(node("n1", 4))  # cards changed
    assert text.render() == reference(state)
    state.remove_node("n2")
    assert text.render() == reference(state)
    state.release("ns/p", "uid-p")
    state.upsert_node(node("n2", 1))  # back, with other cards
    assert text.render() == reference(state)


def test_the_metrics_page_has_the_registry_then_the_cards() -> None:
    state = ClusterState()
    state.upsert_node(node("n1", 2))
    m = Metrics(state)
    m.binds.inc()
    page = m.exposition()
    assert page == generate_latest(m.registry) + reference(state)
    assert b"flexai_binds_total 1.0" in page and b'flexai_card_memory_mib{card="1"' in page
