"""The soak's verdict (benchmarks/soak.py): flat memory and backlog pass; growth after the
warm-up fails, whatever happened during the warm-up."""

from __future__ import annotations

from benchmarks.soak import summarize


def samples(rss, heap=lambda t: 900.0, backlog=lambda t: 3, state=lambda t: 15_000, seconds=480):
    return [{"t": float(t), "published": 20 * t, "consumed": 20 * t - backlog(t), "backlog": backlog(t),
             "rss_mb": rss(t), "heap_kblocks": heap(t), "state_keys": 950, "state_values": state(t)}
            for t in range(5, seconds + 1, 5)]


def verdict(rows):
    return summarize(rows, minutes=8, rate=20, warmup=190, horizon=130)


def test_flat_after_the_warm_up_passes_even_if_memory_grew_during_it():
    summary = verdict(samples(rss=lambda t: 200 + min(t, 190) * 0.2))
    assert summary["passed"], summary
    assert summary["memory_growth_pct"] == 0.0


def test_memory_heap_state_or_backlog_growth_fails():
    growing = lambda base: (lambda t: base * (1 + t / 480))  # noqa: E731  doubles over the run
    assert not verdict(samples(rss=growing(240)))["memory_ok"]
    assert not verdict(samples(rss=lambda t: 240, heap=growing(900)))["memory_ok"]
    assert not verdict(samples(rss=lambda t: 240, state=growing(15_000)))["state_ok"]
    summary = verdict(samples(rss=lambda t: 240, backlog=lambda t: t))
    assert not summary["backlog_ok"] and not summary["passed"]
