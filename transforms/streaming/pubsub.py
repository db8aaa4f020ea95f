"""The streaming source: Pub/Sub (Beam's ReadFromPubSub), and the topic and subscription path
checks shared with the dead-letter sink and the templates."""

from __future__ import annotations

import re
from typing import Optional

import apache_beam as beam
from apache_beam.pvalue import PBegin, PCollection

PROJECT = r"[a-z][a-z0-9-]{4,28}[a-z0-9]"
NAME = r"[A-Za-z][A-Za-z0-9._~+%-]{2,254}"
TOPIC = re.compile(rf"^projects/{PROJECT}/topics/{NAME}$")
SUBSCRIPTION = re.compile(rf"^projects/{PROJECT}/subscriptions/{NAME}$")


def check_topic(value: str, flag: str) -> str:
    if not TOPIC.match(value):
        raise ValueError(f'{flag} must be in the form "projects/<project>/topics/<topic>" (got {value!r})')
    return value


def check_subscription(value: str, flag: str) -> str:
    if not SUBSCRIPTION.match(value):
        raise ValueError(
            f'{flag} must be in the form "projects/<project>/subscriptions/<subscription>" (got {value!r})'
        )
    return value


class ReadPubSubEvents(beam.PTransform[PBegin, PCollection[bytes]]):
    """Pub/Sub messages -> raw payload bytes with event-time timestamps when a timestamp
    attribute is given (else publish time; the payload's timestamp field then decides)."""

    def __init__(
        self,
        subscription: Optional[str] = None,
        topic: Optional[str] = None,
        timestamp_attribute: Optional[str] = None,
        id_attribute: Optional[str] = None,
    ):
        super().__init__()
        if bool(subscription) == bool(topic):
            raise ValueError("give exactly one of --input_subscription and --input_topic")
        self._subscription = check_subscription(subscription, "--input_subscription") if subscription else None
        self._topic = check_topic(topic, "--input_topic") if topic else None
        self._timestamp_attribute = timestamp_attribute
        self._id_attribute = id_attribute

    def expand(self, pbegin: PBegin) -> PCollection[bytes]:
        return pbegin | "Read Pub/Sub" >> beam.io.ReadFromPubSub(
            topic=self._topic,
            subscription=self._subscription,
            timestamp_attribute=self._timestamp_attribute,
            id_label=self._id_attribute,
        )
