"""benchmarks/speech_real_voices.py: the clip plan, the scores, the latency ratio and the report (no TTS
engine, no bundle: the transcripts and timings are made up)."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("tqdm", reason="the benchmark shows progress with tqdm (pip install 'tinymm[dev]')")

from benchmarks.speech_real_voices import (  # noqa: E402
    TARGET_RATIO,
    VOICES,
    example_errors,
    parse_bundle,
    plan_clips,
    render_markdown,
    score_rows,
    speed_ratio,
    summarize_rows,
    synthesis_argv,
)

GO = {"action": "move", "direction": "forward", "distance_m": 2}
STOP = {"action": "stop"}


def _row(engine, clip, tts, reference, expected, hypothesis, intent, seconds, *, rejected=False, timed=True):
    return {"engine": engine, "clip": clip, "tts": tts, "voice": VOICES[tts][0], "reference": reference,
            "expected": expected, "hypothesis": hypothesis, "intent": intent, "rejected": rejected,
            "reason": "no_speech" if rejected else None, "language": None, "seconds": seconds,
            "seconds_no_vad": seconds / 2, "timed": timed}


def test_the_plan_alternates_engines_and_voices_is_seeded_and_a_longer_plan_extends_a_shorter_one():
    plan = plan_clips(12, seed=3)
    assert [c["engine"] for c in plan] == ["flite", "festival"] * 6
    flite = [c["voice"] for c in plan if c["engine"] == "flite"]
    assert flite == [*VOICES["flite"], VOICES["flite"][0]]
    assert [c["voice"] for c in plan if c["engine"] == "festival"] == [*VOICES["festival"]] * 2
    assert len({c["file"] for c in plan}) == 12 and all(c["transcript"] and c["intent"]["action"] for c in plan)
    assert plan_clips(12, seed=3) == plan and plan_clips(5, seed=3) == plan[:5]
    assert [c["transcript"] for c in plan_clips(12, seed=4)] != [c["transcript"] for c in plan]


def test_synthesis_commands_and_bundle_arguments():
    argv, stdin = synthesis_argv("flite", "slt", "Stop.", "out.wav")
    assert argv == ["flite", "-voice", "slt", "-t", "Stop.", "-o", "out.wav"] and stdin is None
    argv, stdin = synthesis_argv("festival", "kal_diphone", "Stop.", "out.wav")
    assert argv == ["text2wave", "-eval", "(voice_kal_diphone)", "-o", "out.wav"] and stdin == "Stop."
    with pytest.raises(ValueError, match="espeak"):
        synthesis_argv("espeak", "en", "Stop.", "out.wav")
    assert parse_bundle("new=runs/speech/bundle") == ("new", "runs/speech/bundle")
    assert parse_bundle("speech-commands") == ("speech-commands", "speech-commands")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bundle("new=")


def test_scores_count_words_intents_delivered_rejections_and_only_timed_latency():
    rows = [
        _row("s", 0, "flite", "go forward two meters", GO, "go forward two meters", GO, 9.0, timed=False),
        _row("s", 1, "flite", "go forward two meters", GO, "go forward two meters", None, 0.010),  # low score
        _row("s", 2, "festival", "stop", STOP, "go forward two meters", GO, 0.020),  # a wrong action
        _row("s", 3, "festival", "stop", STOP, "", None, 0.030, rejected=True),
    ]
    s = score_rows(rows)
    assert s["clips"] == 4 and s["wer"] == pytest.approx((0 + 0 + 4 + 1) / 10)
    assert s["intent_accuracy"] == 0.5  # parsed from the transcript: clips 0 and 1
    assert s["acted_right"] == 0.25 and s["wrong_actions"] == 1 and s["rejected"] == 1
    assert s["timed"] == 3 and s["p50_ms"] == pytest.approx(20.0) and s["p90_ms"] == pytest.approx(28.0)
    # Whisper's written text is normalized before scoring.
    whisper = score_rows([_row("w", 0, "flite", "go forward two meters", GO, "Go forward, 2 meters.", GO, 1.0)])
    assert whisper["wer"] == 0.0 and whisper["intent_accuracy"] == 1.0 and whisper["acted_right"] == 1.0


def test_the_ratio_pairs_the_clips_both_engines_timed_and_judges_the_target():
    seconds = (5.0, 1.0, 2.0, 4.0)  # clip 0 is a warm-up: untimed
    whisper = [_row("w", i, "flite", "stop", STOP, "stop", STOP, s, timed=i > 0) for i, s in enumerate(seconds)]
    fast = [_row("s", i, "flite", "stop", STOP, "stop", STOP, s / 100, timed=i > 0) for i, s in enumerate(seconds)]
    r = speed_ratio(fast, whisper)
    assert r["clips"] == 3 and r["p50_ratio"] == pytest.approx(0.01) and r["paired_ratio"] == pytest.approx(0.01)
    assert r["target_met"] and TARGET_RATIO == pytest.approx(0.02)
    slow = [dict(row, seconds=row["seconds"] * 3) for row in fast]
    assert not speed_ratio(slow, whisper)["target_met"]
    assert speed_ratio(fast, [])["p50_ratio"] is None
    # The recognizers alone (VAD off): bundle rows twice as fast relative to Whisper's here.
    alone = [dict(row, seconds_no_vad=row["seconds"] / 2) for row in fast]
    assert speed_ratio(alone, [dict(r, seconds_no_vad=r["seconds"]) for r in whisper],
                       "seconds_no_vad")["p50_ratio"] == pytest.approx(0.005)


def test_summary_groups_voices_and_examples_and_the_report_renders():
    rows = []
    for i, (tts, said_right) in enumerate((("flite", True), ("festival", False), ("flite", False), ("festival", True))):
        rows.append(_row("speech-commands", i, tts, "stop", STOP, "stop" if said_right else "go forward two meters",
                         STOP if said_right else GO, 0.01))
        rows.append(_row("whisper-base", i, tts, "stop", STOP, "Stop.", STOP, 1.0))
    summary = summarize_rows(rows, ["speech-commands", "whisper-base"], "whisper-base")
    assert list(summary["scores"]["speech-commands"]) == ["flite", "festival", "all"]
    assert summary["scores"]["speech-commands"]["all"]["acted_right"] == 0.5
    assert summary["scores"]["whisper-base"]["all"]["wer"] == 0.0
    assert list(summary["ratios"]) == ["speech-commands"]
    assert summary["ratios"]["speech-commands"]["all"]["p50_ratio"] == pytest.approx(0.01)
    voices = {f"{tts}/{names[0]}" for tts, names in VOICES.items()}
    assert set(summary["by_voice"]["speech-commands"]) == voices
    examples = example_errors(rows)
    assert [e["engine"] for e in examples] == ["speech-commands"] * 2
    assert {e["tts"] for e in examples} == {"flite", "festival"} and examples[0]["outcome"].startswith("wrong intent")
    doc = {"command": "python benchmarks/speech_real_voices.py --clips 4", "date": "2026-01-01", "seconds": 3.0,
           "machine_summary": "a CPU, 2 cores", "threads": 2, "seed": 0, "clips": 4, "warmup": 0,
           "tts": {e: {"version": None, "voices": [VOICES[e][0]], "clips": 2} for e in VOICES},
           "engines": {"speech-commands": {"precision": {"speech_encoder": "int8"}, "vad": "silero-vad",
                                           "reject_threshold": 0.2},
                       "whisper-base": {"precision": {"encoder": "fp32", "decoder_with_past": "int8"}, "vad": None,
                                        "reject_threshold": None}},
           **summary, "examples": examples}
    text = render_markdown(doc)
    assert "reserved for evaluation" in text and "never trains or tunes on them" in text
    # "stop" heard as "go forward two meters": 4 edits per 1-word reference, on 2 of 4 clips.
    assert "| speech-commands | int8 | all | 4 | 200.0% | 50.0% | 50.0% | 2 | 0 |" in text
    assert "1/100" in text and "met" in text
    assert "encoder fp32, decoder_with_past int8" in text and "go forward two meters" in text
