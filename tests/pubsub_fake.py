"""In-process fake of the Google Cloud Pub/Sub gRPC API for tests.

Start it, point ``PUBSUB_EMULATOR_HOST`` at the returned address, and the real
``google-cloud-pubsub`` client (and Beam's DirectRunner Pub/Sub I/O, which uses
that client) talks to it.  State lives in memory; delivery is at-least-once:
unacked messages are redelivered when their ack deadline expires or on a nack.

google-cloud-pubsub ships no ``*_pb2_grpc`` module, so the services are served
through ``grpc.method_handlers_generic_handler`` using the raw protobuf classes
behind the proto-plus types in ``google.pubsub_v1.types`` (same wire format).
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Iterator, NoReturn, Optional

import grpc
from google.protobuf import empty_pb2, timestamp_pb2
from google.pubsub_v1.types import pubsub as _types

__all__ = ["FakePubSubServer", "start_fake_pubsub"]

_DELETED_TOPIC = "_deleted-topic_"
_DEFAULT_ACK_DEADLINE = 10
_MAX_ACK_DEADLINE = 600
_POLL_SLICE = 0.05  # how often waiting pulls re-check for expired ack deadlines


def _pb(name: str) -> Any:
    """Return the raw protobuf class behind a proto-plus Pub/Sub type."""
    return getattr(_types, name).pb()


# RPC name -> (request type, response type); None means google.protobuf.Empty.
_PUBLISHER_RPCS: dict[str, tuple[str, Optional[str]]] = {
    "CreateTopic": ("Topic", "Topic"),
    "GetTopic": ("GetTopicRequest", "Topic"),
    "ListTopics": ("ListTopicsRequest", "ListTopicsResponse"),
    "ListTopicSubscriptions": ("ListTopicSubscriptionsRequest", "ListTopicSubscriptionsResponse"),
    "DeleteTopic": ("DeleteTopicRequest", None),
    "Publish": ("PublishRequest", "PublishResponse"),
}
_SUBSCRIBER_RPCS: dict[str, tuple[str, Optional[str]]] = {
    "CreateSubscription": ("Subscription", "Subscription"),
    "GetSubscription": ("GetSubscriptionRequest", "Subscription"),
    "ListSubscriptions": ("ListSubscriptionsRequest", "ListSubscriptionsResponse"),
    "DeleteSubscription": ("DeleteSubscriptionRequest", None),
    "Pull": ("PullRequest", "PullResponse"),
    "Acknowledge": ("AcknowledgeRequest", None),
    "ModifyAckDeadline": ("ModifyAckDeadlineRequest", None),
}


@dataclass
class _Delivery:
    """One message queued on one subscription, with its delivery count."""

    message: Any  # PubsubMessage (raw protobuf)
    attempts: int = 0


@dataclass
class _Subscription:
    """Server-side state of a subscription."""

    proto: Any  # Subscription (raw protobuf)
    pending: collections.deque[_Delivery] = field(default_factory=collections.deque)
    # ack_id -> (delivery, monotonic deadline)
    outstanding: dict[str, tuple[_Delivery, float]] = field(default_factory=dict)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """Terminate the RPC with a gRPC status (raises)."""
    context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort always raises


def _check_name(context: grpc.ServicerContext, name: str, kind: str) -> None:
    """Require ``projects/{project}/{kind}/{id}``."""
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "projects" or parts[2] != kind or not parts[1] or not parts[3]:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid resource name: {name!r}")


def _check_deadline(context: grpc.ServicerContext, seconds: int) -> None:
    """Reject ack deadlines outside [0, 600] like the real service."""
    if not 0 <= seconds <= _MAX_ACK_DEADLINE:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid ack deadline: {seconds}")


class FakePubSubServer:
    """Thread-safe in-memory Pub/Sub Publisher + Subscriber gRPC server.

    RPC handlers (CamelCase, like generated servicers) cover topic/subscription
    CRUD, Publish, Pull, Acknowledge, ModifyAckDeadline and StreamingPull.
    """

    def __init__(self, pull_wait_seconds: float = 0.25, max_workers: int = 64, record: bool = True) -> None:
        """``pull_wait_seconds`` bounds how long an empty non-immediate Pull waits; ``record``
        keeps every published message for ``published()`` (off for long soak runs)."""
        self.pull_wait_seconds = pull_wait_seconds
        self._record = record
        self._max_workers = max_workers
        self._cond = threading.Condition(threading.RLock())
        self._topics: dict[str, Any] = {}
        self._subs: dict[str, _Subscription] = {}
        self._published: dict[str, list[tuple[bytes, dict[str, str]]]] = collections.defaultdict(list)
        self._message_ids = itertools.count(1)
        self._ack_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._server: Optional[grpc.Server] = None
        self._saved_env: Optional[tuple[Optional[str]]] = None
        self.address: Optional[str] = None

    # ----------------------------------------------------------- lifecycle
    def start(self) -> str:
        """Bind 127.0.0.1 on a free port, start serving and return ``host:port``."""
        if self._server is not None:
            raise RuntimeError("FakePubSubServer already started")
        self._stopping.clear()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="fake-pubsub"),
            options=[("grpc.so_reuseport", 0)],
        )
        server.add_generic_rpc_handlers(
            (
                self._generic_handler("google.pubsub.v1.Publisher", _PUBLISHER_RPCS),
                self._generic_handler("google.pubsub.v1.Subscriber", _SUBSCRIBER_RPCS, streaming=True),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self, grace: float = 0.5) -> None:
        """Stop serving (ends open streams) and restore PUBSUB_EMULATOR_HOST if we set it."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._saved_env is not None:
            (previous,) = self._saved_env
            if previous is None:
                os.environ.pop("PUBSUB_EMULATOR_HOST", None)
            else:
                os.environ["PUBSUB_EMULATOR_HOST"] = previous
            self._saved_env = None

    def set_emulator_env(self) -> None:
        """Point PUBSUB_EMULATOR_HOST at this server; ``stop()`` restores the old value."""
        if self.address is None:
            raise RuntimeError("start() the server first")
        if self._saved_env is None:
            self._saved_env = (os.environ.get("PUBSUB_EMULATOR_HOST"),)
        os.environ["PUBSUB_EMULATOR_HOST"] = self.address

    def __enter__(self) -> "FakePubSubServer":
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------- test helpers
    def published(self, topic_path: str) -> list[tuple[bytes, dict[str, str]]]:
        """Every ``(data, attributes)`` ever published to ``topic_path``, in order."""
        with self._cond:
            return list(self._published.get(topic_path, ()))

    def backlog(self, subscription_path: str) -> int:
        """Number of messages on a subscription not yet acknowledged."""
        with self._cond:
            sub = self._subs[subscription_path]
            return len(sub.pending) + len(sub.outstanding)

    # ------------------------------------------------------- gRPC plumbing
    def _generic_handler(
        self, service: str, rpcs: dict[str, tuple[str, Optional[str]]], streaming: bool = False
    ) -> grpc.GenericRpcHandler:
        """Build a generic handler for one service from the RPC table."""
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for rpc, (request, response) in rpcs.items():
            response_cls = _pb(response) if response else empty_pb2.Empty
            handlers[rpc] = grpc.unary_unary_rpc_method_handler(
                getattr(self, rpc),
                request_deserializer=_pb(request).FromString,
                response_serializer=response_cls.SerializeToString,
            )
        if streaming:
            handlers["StreamingPull"] = grpc.stream_stream_rpc_method_handler(
                self.StreamingPull,
                request_deserializer=_pb("StreamingPullRequest").FromString,
                response_serializer=_pb("StreamingPullResponse").SerializeToString,
            )
        return grpc.method_handlers_generic_handler(service, handlers)

    def _topic(self, context: grpc.ServicerContext, name: str) -> Any:
        """Look up a topic or abort with NOT_FOUND."""
        if name not in self._topics:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"Topic not found: {name}")
        return self._topics[name]

    def _sub(self, context: grpc.ServicerContext, name: str) -> _Subscription:
        """Look up a subscription or abort with NOT_FOUND."""
        if name not in self._subs:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"Subscription does not exist: {name}")
        return self._subs[name]

    # ----------------------------------------------------------- Publisher
    def CreateTopic(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_name(context, request.name, "topics")
        with self._cond:
            if request.name in self._topics:
                _abort(context, grpc.StatusCode.ALREADY_EXISTS, f"Topic already exists: {request.name}")
            self._topics[request.name] = request
            return request

    def GetTopic(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            return self._topic(context, request.topic)

    def ListTopics(self, request: Any, context: grpc.ServicerContext) -> Any:
        prefix = f"{request.project}/topics/"
        with self._cond:
            topics = [t for name, t in sorted(self._topics.items()) if name.startswith(prefix)]
        return _pb("ListTopicsResponse")(topics=topics)

    def ListTopicSubscriptions(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            self._topic(context, request.topic)
            names = sorted(n for n, s in self._subs.items() if s.proto.topic == request.topic)
        return _pb("ListTopicSubscriptionsResponse")(subscriptions=names)

    def DeleteTopic(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            self._topic(context, request.topic)
            del self._topics[request.topic]
            for sub in self._subs.values():
                if sub.proto.topic == request.topic:
                    sub.proto.topic = _DELETED_TOPIC
        return empty_pb2.Empty()

    def Publish(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.messages:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "No messages to publish")
        if any(not m.data and not m.attributes for m in request.messages):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "A message needs data or attributes")
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        with self._cond:
            self._topic(context, request.topic)
            subs = [s for s in self._subs.values() if s.proto.topic == request.topic]
            ids = []
            for incoming in request.messages:
                message = _pb("PubsubMessage")()
                message.CopyFrom(incoming)
                message.message_id = str(next(self._message_ids))
                message.publish_time.CopyFrom(now)
                ids.append(message.message_id)
                if self._record:
                    self._published[request.topic].append((bytes(message.data), dict(message.attributes)))
                for sub in subs:
                    sub.pending.append(_Delivery(message))
            self._cond.notify_all()
        return _pb("PublishResponse")(message_ids=ids)

    # ---------------------------------------------------------- Subscriber
    def CreateSubscription(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_name(context, request.name, "subscriptions")
        _check_deadline(context, request.ack_deadline_seconds)
        with self._cond:
            if request.name in self._subs:
                _abort(context, grpc.StatusCode.ALREADY_EXISTS, f"Subscription already exists: {request.name}")
            self._topic(context, request.topic)
            if not request.ack_deadline_seconds:
                request.ack_deadline_seconds = _DEFAULT_ACK_DEADLINE
            self._subs[request.name] = _Subscription(proto=request)
            return request

    def GetSubscription(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            return self._sub(context, request.subscription).proto

    def ListSubscriptions(self, request: Any, context: grpc.ServicerContext) -> Any:
        prefix = f"{request.project}/subscriptions/"
        with self._cond:
            subs = [s.proto for name, s in sorted(self._subs.items()) if name.startswith(prefix)]
        return _pb("ListSubscriptionsResponse")(subscriptions=subs)

    def DeleteSubscription(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            self._sub(context, request.subscription)
            del self._subs[request.subscription]
            self._cond.notify_all()
        return empty_pb2.Empty()

    def Pull(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.max_messages <= 0:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "max_messages must be positive")
        wait = 0.0 if request.return_immediately else self.pull_wait_seconds
        remaining = context.time_remaining()
        if remaining is not None:
            wait = max(0.0, min(wait, remaining - 0.1))
        end = time.monotonic() + wait
        with self._cond:
            while True:
                sub = self._sub(context, request.subscription)
                received = self._take(sub, request.max_messages, sub.proto.ack_deadline_seconds)
                left = end - time.monotonic()
                if received or left <= 0 or self._stopping.is_set() or not context.is_active():
                    return _pb("PullResponse")(received_messages=received)
                self._cond.wait(min(left, _POLL_SLICE))

    def Acknowledge(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._cond:
            self._ack(self._sub(context, request.subscription), request.ack_ids)
        return empty_pb2.Empty()

    def ModifyAckDeadline(self, request: Any, context: grpc.ServicerContext) -> Any:
        _check_deadline(context, request.ack_deadline_seconds)
        with self._cond:
            sub = self._sub(context, request.subscription)
            self._modify(sub, request.ack_ids, [request.ack_deadline_seconds] * len(request.ack_ids))
        return empty_pb2.Empty()

    def StreamingPull(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        """Bidirectional pull: apply acks/modacks from requests, stream out messages."""
        first = next(request_iterator, None)
        if first is None:
            return
        name = first.subscription
        _check_deadline(context, first.stream_ack_deadline_seconds)
        with self._cond:
            self._sub(context, name)
        stream = {"deadline": first.stream_ack_deadline_seconds or _DEFAULT_ACK_DEADLINE}
        max_outstanding = first.max_outstanding_messages
        closed = threading.Event()

        def apply(req: Any) -> None:
            with self._cond:
                sub = self._subs.get(name)
                if req.stream_ack_deadline_seconds:
                    stream["deadline"] = min(req.stream_ack_deadline_seconds, _MAX_ACK_DEADLINE)
                if sub is not None:
                    self._ack(sub, req.ack_ids)
                    self._modify(sub, req.modify_deadline_ack_ids, req.modify_deadline_seconds)

        def read_requests() -> None:
            try:
                for req in request_iterator:
                    apply(req)
            except Exception:  # stream cancelled or broken: just end it
                pass
            finally:
                closed.set()
                with self._cond:
                    self._cond.notify_all()

        apply(first)
        threading.Thread(target=read_requests, name="fake-pubsub-stream-reader", daemon=True).start()
        mine: set[str] = set()  # ack ids delivered on this stream (for flow control)
        while not closed.is_set() and not self._stopping.is_set() and context.is_active():
            with self._cond:
                sub = self._sub(context, name)
                self._expire(sub)
                mine.intersection_update(sub.outstanding)
                room = max_outstanding - len(mine) if max_outstanding > 0 else 1000
                received: list[Any] = self._take(sub, min(room, 1000), stream["deadline"]) if room > 0 else []
                if not received:
                    self._cond.wait(_POLL_SLICE)
                    continue
                mine.update(r.ack_id for r in received)
            yield _pb("StreamingPullResponse")(received_messages=received)

    # --------------------------------------------- delivery (lock held)
    def _expire(self, sub: _Subscription) -> None:
        """Move leases whose ack deadline passed back to the front of the queue."""
        now = time.monotonic()
        expired = [ack_id for ack_id, (_, deadline) in sub.outstanding.items() if deadline <= now]
        sub.pending.extendleft(reversed([sub.outstanding.pop(a)[0] for a in expired]))

    def _take(self, sub: _Subscription, limit: int, deadline_seconds: int) -> list[Any]:
        """Redeliver expired leases, then lease up to ``limit`` pending messages."""
        self._expire(sub)
        now = time.monotonic()
        received: list[Any] = []
        while sub.pending and len(received) < limit:
            delivery = sub.pending.popleft()
            delivery.attempts += 1
            ack_id = f"{delivery.message.message_id}-{next(self._ack_ids)}"
            sub.outstanding[ack_id] = (delivery, now + deadline_seconds)
            received.append(
                _pb("ReceivedMessage")(ack_id=ack_id, message=delivery.message, delivery_attempt=delivery.attempts)
            )
        return received

    def _ack(self, sub: _Subscription, ack_ids: Any) -> None:
        """Drop acknowledged leases; unknown or expired ack ids are ignored."""
        for ack_id in ack_ids:
            sub.outstanding.pop(ack_id, None)

    def _modify(self, sub: _Subscription, ack_ids: Any, seconds: Any) -> None:
        """Extend leases; a deadline of 0 is a nack and requeues the message first."""
        now = time.monotonic()
        nacked = []
        for ack_id, secs in zip(ack_ids, seconds):
            if ack_id not in sub.outstanding:
                continue
            delivery, _ = sub.outstanding[ack_id]
            if secs <= 0:
                del sub.outstanding[ack_id]
                nacked.append(delivery)
            else:
                sub.outstanding[ack_id] = (delivery, now + min(secs, _MAX_ACK_DEADLINE))
        if nacked:
            sub.pending.extendleft(reversed(nacked))
            self._cond.notify_all()


def start_fake_pubsub(set_env: bool = True, pull_wait_seconds: float = 0.25) -> FakePubSubServer:
    """Start a fake server; by default also set PUBSUB_EMULATOR_HOST (restored by ``stop()``)."""
    server = FakePubSubServer(pull_wait_seconds=pull_wait_seconds)
    server.start()
    if set_env:
        server.set_emulator_env()
    return server
