"""Text embeddings as Beam transforms: text events parsed (the shared verdict, plus the text
field) into TextRecords, embedded with Beam's RunInference (transforms/embed/model.py), emitted as
FeatureRows; every refused text or failed batch becomes a dead letter.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import RowCoder, registry
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
from apache_beam.pvalue import PCollection

from transforms.embed.model import NAMESPACE, TextEmbeddingHandler
from transforms.parse import (
    DEAD_LETTER_TAG,
    BadEvent,
    ParsePlan,
    Verdicts,
    dead_letter,
    decode_record,
    valid_text,
)
from transforms.records import DeadLetter, FeatureRow
from transforms.spec import EmbeddingSpec, FeatureSpecFile

DEFAULT_MAX_CHARS = 100_000


class TextRecord(NamedTuple):
    """One text to embed: the entity it describes, its event time, and the text (None if absent)."""

    entity: str
    event_ms: int
    text: Optional[str]


registry.register_coder(TextRecord, RowCoder)



# -- parsing --------------------------------------------------------------------------------
def text_plan(spec: FeatureSpecFile, embedding: EmbeddingSpec) -> ParsePlan:
    """The shared event parser reduced to what an embedding needs: time, id and entity key."""
    entity = spec.entities[embedding.entity]
    return ParsePlan(spec.source.timestamp_field, spec.source.id_field,
                     ((embedding.entity, entity.join_key, entity.dtype),), (), (), ())


def parse_text_event(raw: Any, plan: ParsePlan, field: str,
                     element_time_ms: Optional[int] = None) -> TextRecord:
    """JSON bytes/str or dict -> TextRecord; raises BadEvent. A missing text stays None here."""
    record = decode_record(raw)
    event = plan.parse(record, element_time_ms)
    text = record.get(field)
    if text is not None and not isinstance(text, str):
        raise BadEvent("bad_type", f"{field}: must be a string (got {_short(text)})")
    if text is not None:
        text = valid_text(text, field)  # records that arrive as objects may hold lone surrogates
    return TextRecord(event.keys[0], event.event_time_ms, text)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _ParseTextFn(beam.DoFn):
    def __init__(self, plan: ParsePlan, field: str, timestamp_from_element: bool):
        self._plan, self._field, self._from_element = plan, field, timestamp_from_element
        self._verdicts = Verdicts(parse_text_event)
        self._parsed = Metrics.counter(NAMESPACE, "events_parsed")
        self._dead = Metrics.counter(NAMESPACE, "parse_dead_lettered")

    def process(self, raw: Any, timestamp=beam.DoFn.TimestampParam) -> Iterable:
        element_ms = timestamp.micros // 1000 if self._from_element else None
        record, letter = self._verdicts(raw, self._plan, self._field, element_ms)
        if letter is not None:
            self._dead.inc()
            yield pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)
            return
        self._parsed.inc()
        yield record


class ParseTextEvents(beam.PTransform[PCollection[Any], pvalue.DoOutputsTuple]):
    """Raw events -> (texts: PCollection[TextRecord], dead_letter) for one embedding of the spec."""

    def __init__(self, spec: FeatureSpecFile, embedding: EmbeddingSpec,
                 timestamp_from_element: bool = False):
        super().__init__()
        self._plan = text_plan(spec, embedding)
        self._field = embedding.field
        self._from_element = timestamp_from_element

    def expand(self, raw: PCollection[Any]) -> pvalue.DoOutputsTuple:
        parse = beam.ParDo(_ParseTextFn(self._plan, self._field, self._from_element))
        return raw | "Parse" >> parse.with_outputs(DEAD_LETTER_TAG, main="texts")


class _CheckTextFn(beam.DoFn):
    """Valid texts continue keyed by (entity, event ms); the others become dead letters."""

    def __init__(self, to_payload: Callable[[TextRecord], dict], max_chars: int):
        self._to_payload = to_payload
        self._max_chars = max_chars
        self._dead = Metrics.counter(NAMESPACE, "dead_lettered")
        self._refused = {reason: Metrics.counter(NAMESPACE, f"dead_letter_{reason}")
                         for reason in ("missing_text", "bad_type", "empty_text", "text_too_long")}

    def process(self, record: TextRecord) -> Iterable:
        text = record.text
        if text is None:
            reason, error = "missing_text", "no text to embed"
        elif not isinstance(text, str):
            reason, error = "bad_type", f"text must be a string (got {_short(text)})"
        elif not text.strip():
            reason, error = "empty_text", f"text is empty or whitespace (got {_short(text)})"
        elif len(text) > self._max_chars:
            reason = "text_too_long"
            error = f"text has {len(text)} characters (max {self._max_chars})"
        else:
            yield (record.entity, record.event_ms), text
            return
        self._dead.inc()
        self._refused[reason].inc()
        letter = dead_letter(self._to_payload(record), reason, error, "embed")
        yield pvalue.TaggedOutput(DEAD_LETTER_TAG, letter)


class _Payload:
    """Rebuilds the event (join key, timestamp, text field) so a dead letter can be replayed."""

    def __init__(self, join_key: str, key_dtype: str, timestamp_field: str, field: str):
        self._names = (join_key, timestamp_field, field)
        self._int_key = key_dtype == "int64"

    def __call__(self, record: TextRecord) -> dict:
        key = int(record.entity) if self._int_key else record.entity
        return dict(zip(self._names, (key, record.event_ms, record.text), strict=True))


def _to_row(result: tuple, view: str) -> FeatureRow:
    (entity, event_ms), prediction = result
    vector = prediction.inference
    # The event time is the "window": the online store keeps the latest text's embedding.
    return FeatureRow(view, entity, event_ms, event_ms, "ON_TIME", 0, event_ms, (vector.tolist(),))


class _FailedBatchFn(beam.DoFn):
    """A batch RunInference could not embed -> one dead letter per text in it."""

    def __init__(self, to_payload: Callable[[TextRecord], dict]):
        self._to_payload = to_payload
        self._failed = Metrics.counter(NAMESPACE, "dead_letter_inference_failed")

    def process(self, failed: tuple) -> Iterable[DeadLetter]:
        batch, (_, error, _) = failed
        self._failed.inc(len(batch))
        for (entity, event_ms), text in batch:
            payload = self._to_payload(TextRecord(entity, event_ms, text))
            yield dead_letter(payload, "inference_failed", error, "embed")


class EmbedOutputs(NamedTuple):
    rows: PCollection  # FeatureRow(view=embedding name, features=(list of float32,))
    dead_letters: PCollection  # DeadLetter, stage "embed"


class EmbedTexts(beam.PTransform[PCollection[TextRecord], EmbedOutputs]):
    """PCollection[TextRecord] -> EmbedOutputs(rows, dead_letters) for one embedding of the spec."""

    def __init__(self, spec: FeatureSpecFile, embedding: EmbeddingSpec,
                 handler: Optional[TextEmbeddingHandler] = None,
                 max_chars: int = DEFAULT_MAX_CHARS):
        super().__init__()
        if max_chars < 1:
            raise ValueError(f"max_chars must be >= 1 (got {max_chars!r})")
        entity = spec.entities[embedding.entity]
        self._view = embedding.name
        self._handler = handler or TextEmbeddingHandler(embedding.model_path)
        self._max_chars = max_chars
        self._payload = _Payload(entity.join_key, entity.dtype, spec.source.timestamp_field,
                                 embedding.field)

    def expand(self, records: PCollection[TextRecord]) -> EmbedOutputs:
        check = beam.ParDo(_CheckTextFn(self._payload, self._max_chars))
        # A typed (key, text) pair: the streaming BatchElements keeps it in state with this coder.
        checked = records | "Check texts" >> check.with_output_types(
            Tuple[Tuple[str, int], str]).with_outputs(DEAD_LETTER_TAG, main="texts")
        results, failed = checked.texts | "RunInference" >> RunInference(
            KeyedModelHandler(self._handler)).with_exception_handling()
        to_rows = beam.Map(_to_row, self._view).with_output_types(FeatureRow)
        rows = results | "To feature rows" >> to_rows
        failed_letters = failed.failed_inferences | "Failed batches" >> beam.ParDo(
            _FailedBatchFn(self._payload)).with_output_types(DeadLetter)
        dead = (checked[DEAD_LETTER_TAG], failed_letters) | "Merge dead letters" >> beam.Flatten()
        return EmbedOutputs(rows, dead)
