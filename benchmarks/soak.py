"""Soak: publish events at a fixed rate for minutes into Pub/Sub (the in-process fake gRPC server,
or PUBSUB_EMULATOR_HOST), run streaming_features on the DirectRunner, and record throughput,
backlog (lag) and memory over time. Pass: no memory growth and no backlog growth at the rate.

    python -m benchmarks.soak [--minutes 3] [--rate 20] [--out benchmarks/results]

Exits non-zero when memory grows more than 10 % or the backlog grows. The rate is the
DirectRunner's (a development runner, a few hundred events/s at best on one core); on
Dataflow the same job scales out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WITH_IDS = os.environ.get("SOAK_DEDUP", "1") != "0"


def rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _spec(path: Path) -> Path:
    """The example spec with short lateness and dedup horizon, so the state a streaming job must
    keep (open windows, remembered ids) reaches its steady size within the soak's minutes."""
    spec = yaml.safe_load((REPO / "pipelines" / "examples" / "shop.yaml").read_text())
    if not WITH_IDS:
        spec["source"].pop("id_field", None)
    spec["source"]["dedup_horizon"] = "30s"
    for view in spec["feature_views"]:
        view["allowed_lateness"] = "30s"
    spec_path = path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return spec_path


def run(minutes: float, rate: float, out: Path) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from google.cloud import pubsub_v1

    from pipelines import streaming_features

    server = None
    if not os.environ.get("PUBSUB_EMULATOR_HOST"):
        from pubsub_fake import FakePubSubServer

        server = FakePubSubServer(record=False)  # the fake lives in this process: keep it flat
        server.start()
        server.set_emulator_env()
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    topic = f"projects/soak-project/topics/events-{uuid.uuid4().hex[:6]}"
    subscription = f"projects/soak-project/subscriptions/soak-{uuid.uuid4().hex[:6]}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)

    result = streaming_features.run([
        "--input_subscription", subscription, "--feature_spec", str(_spec(work)),
        "--online_store", f"sqlite:///{work}/online.db", "--offline_store", str(work / "offline"),
        "--runner", "BundleBasedDirectRunner",
    ], wait=False)

    stop = threading.Event()
    published = [0]

    def publish() -> None:
        rng = random.Random(1)
        started = time.time()
        while not stop.is_set():
            due = int((time.time() - started) * rate)
            while published[0] < due:
                record = {"event_id": f"e{published[0]}", "event_time": int(time.time() * 1000),
                          "user_id": f"u{int(rng.paretovariate(1.2)) % 500}", "item_id": f"i{rng.randrange(300)}",
                          "event_type": rng.choice(["view", "view", "click", "purchase"]),
                          "amount": round(rng.uniform(1, 100), 2)}
                publisher.publish(topic, json.dumps(record).encode())
                published[0] += 1
            time.sleep(0.02)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    samples = []
    started = time.time()
    try:
        while time.time() - started < minutes * 60:
            time.sleep(5)
            backlog = server.backlog(subscription) if server else None
            consumed = published[0] - (backlog or 0)
            samples.append({"t": round(time.time() - started, 1), "published": published[0],
                            "backlog": backlog, "consumed": consumed, "rss_mb": round(rss_mb(), 1)})
            print(f"  {samples[-1]}", flush=True)
    finally:
        stop.set()
        result.cancel()
        if server:
            server.stop()
    third = max(1, len(samples) // 3)
    first, last = samples[:third], samples[-third:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    duration = samples[-1]["t"] - samples[0]["t"] if len(samples) > 1 else 1
    summary = {
        "minutes": minutes, "target_rate": rate,
        "throughput_eps": round((samples[-1]["consumed"] - samples[0]["consumed"]) / duration, 1),
        "rss_first_third_mb": round(mean(first, "rss_mb"), 1), "rss_last_third_mb": round(mean(last, "rss_mb"), 1),
        "backlog_first_third": mean(first, "backlog") if server else None,
        "backlog_last_third": mean(last, "backlog") if server else None,
        "samples": samples,
    }
    summary["memory_growth_pct"] = round(100 * (summary["rss_last_third_mb"] / summary["rss_first_third_mb"] - 1), 1)
    if server:
        summary["lag_seconds_last_third"] = round(summary["backlog_last_third"] / rate, 2)
    # Pass: memory flat after warm-up (<= 10 % from the first to the last third) and the
    # backlog not growing (last third within 5 seconds' worth of events of the first).
    summary["memory_ok"] = summary["memory_growth_pct"] <= 10
    summary["backlog_ok"] = (not server) or summary["backlog_last_third"] <= summary["backlog_first_third"] + 5 * rate
    summary["passed"] = summary["memory_ok"] and summary["backlog_ok"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(summary, indent=2))
    _chart(summary, out / "soak.png")
    return summary


def _chart(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in summary["samples"]]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].plot(t, [s["consumed"] for s in summary["samples"]], label="consumed")
    axes[0].plot(t, [s["published"] for s in summary["samples"]], label="published", linestyle="--")
    axes[0].set_ylabel("events")
    axes[0].legend()
    axes[1].plot(t, [s["backlog"] or 0 for s in summary["samples"]], color="tab:red")
    axes[1].set_ylabel("backlog (events)")
    axes[2].plot(t, [s["rss_mb"] for s in summary["samples"]], color="tab:green")
    axes[2].set_ylabel("RSS (MB)")
    axes[2].set_xlabel("seconds")
    fig.suptitle(f"Soak: {summary['target_rate']:.0f} events/s for {summary['minutes']} min, "
                 f"memory growth {summary['memory_growth_pct']} %")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    summary = run(args.minutes, args.rate, Path(args.out))
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))
    sys.exit(0 if summary["passed"] else 1)


if __name__ == "__main__":
    main()
