"""The command lines: grouped --help with every flag's text, --help_beam, unknown flags refused
with a suggestion (exit 2, nothing written), Beam's own options passed through, and a failed run
described in one line naming the step (exit 1)."""

from __future__ import annotations

import argparse

import apache_beam as beam
import pytest

from conftest import EXAMPLE_SPEC, batch_options
from pipelines import backfill_features, embed_texts, streaming_features
from pipelines.cli import describe_failure
from pipelines.sample_events import generate

ENTRY_POINTS = {"backfill_features": backfill_features, "streaming_features": streaming_features,
                "embed_texts": embed_texts}


def declared_flags(option_classes) -> list[argparse.Action]:
    """The flags the entry point's PipelineOptions classes declare (Beam's hook for them)."""
    parser = argparse.ArgumentParser(add_help=False)
    for options_class in option_classes:
        options_class._add_argparse_args(parser)
    return parser._actions


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_lists_every_flag_grouped_with_its_text(name, capsys):
    module = ENTRY_POINTS[name]
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m pipelines.{name}")
    assert out.index("\ninput:\n") < out.index("\nstores:\n") < out.index("\nbehaviour:\n")
    flat = "".join(out.split())  # argparse wraps help texts (also at hyphens)
    for action in declared_flags(module.OPTIONS):
        text = action.help
        if action.default not in (None, False) and "default" not in text:
            text += f" (default: {action.default})"
        assert action.option_strings[-1] in out, action.dest
        assert "".join(text.split()) in flat, action.dest
    assert "--verbose" in out and "-h, --help" in out
    assert "--help_beamliststhemall" in flat


def test_help_beam_lists_beams_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        backfill_features.main(["--help_beam"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--runner" in out and "--flink_master" in out and "--dead_letter" in out


@pytest.mark.parametrize("module, typo, suggestion", [
    (backfill_features, "--dead_leter", "--dead_letter"),
    (streaming_features, "--replay_max_dely", "--replay_max_delay"),
    (backfill_features, "--runer", "--runner"),
])
def test_an_unknown_flag_is_refused_with_a_suggestion_and_nothing_is_written(module, typo, suggestion, tmp_path,
                                                                            capsys):
    events = tmp_path / "e.jsonl"
    events.write_bytes(b"\n".join(generate(10, seed=1)) + b"\n")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--events", str(events), typo, "x", "--feature_spec", str(EXAMPLE_SPEC),
                     "--online_store", f"sqlite:///{tmp_path}/online.db", "--offline_store", str(tmp_path / "off")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{module.__name__.split('.')[-1]}: error: unknown option {typo}; did you mean {suggestion}?"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]


@pytest.mark.parametrize("module", [backfill_features, streaming_features])
def test_an_unsupported_store_url_is_a_usage_error(module, tmp_path, capsys):
    events = tmp_path / "e.jsonl"
    events.write_bytes(b"\n".join(generate(10, seed=1)) + b"\n")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--events", str(events), "--feature_spec", str(EXAMPLE_SPEC), "--online_store",
                     "mysql://u:pw@h/db", "--offline_store", str(tmp_path / "off")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsupported URL 'mysql://u:***@h/db'" in err[0] and "pw@" not in err[0], err


def test_beams_own_options_pass_through(tmp_path, capsys):
    events = tmp_path / "e.jsonl"
    events.write_bytes(b"\n".join(generate(200, seed=1)) + b"\n")
    backfill_features.main(["--events", str(events), "--feature_spec", str(EXAMPLE_SPEC),
                            "--online_store", f"sqlite:///{tmp_path}/online.db", "--offline_store",
                            str(tmp_path / "off"), "--runner", "FnApiRunner", "--direct_num_workers", "1",
                            "--job_name", "backfill-test", "--verbose"])
    err = capsys.readouterr().err
    assert "engine: FnApiRunner" in err and "parse.events_in" in err


class _Boom(beam.DoFn):
    def process(self, element):
        if element == 3:
            raise ValueError(f"bad element {element}")
        yield element


def test_a_failed_run_is_one_line_naming_the_step_and_the_cause():
    with pytest.raises(Exception) as failure:
        with beam.Pipeline(options=batch_options()) as p:
            p | beam.Create([1, 2, 3]) | "Check elements" >> beam.ParDo(_Boom())
    assert describe_failure(failure.value) == "step 'Check elements' failed: ValueError: bad element 3"
