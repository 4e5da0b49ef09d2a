"""Speech recognition metrics: WER, CER (corpus level) and intent accuracy.

- WER: word edit distance (substitutions + deletions + insertions) summed over the corpus,
  divided by the number of reference words. CER: the same over characters, spaces included.
  Both are computed on ``normalize_transcript`` of reference and hypothesis.
- Intent accuracy: the runtime's ``IntentParser`` parses the hypothesis; it is right when the
  parsed intent equals the reference intent (action, direction, distance, color, shape, and for
  questions the question type). A hypothesis the parser cannot read counts as wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

from tinymm.robot.intent import Intent, IntentParser
from tinymm.robot.transcripts import normalize_transcript


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance between two sequences (unit cost substitutions, deletions, insertions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_item in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_item in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_item != hyp_item))
        previous = current
    return previous[-1]


def _check_pairs(references: Sequence[str], hypotheses: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses; pass one per clip")


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total word edits / total reference words (0.0 for an empty corpus)."""
    _check_pairs(references, hypotheses)
    edits = total = 0
    for ref, hyp in zip(references, hypotheses):
        ref_words, hyp_words = normalize_transcript(ref).split(), normalize_transcript(hyp).split()
        edits += edit_distance(ref_words, hyp_words)
        total += len(ref_words)
    return edits / total if total else 0.0


def char_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus CER: total character edits / total reference characters, spaces included."""
    _check_pairs(references, hypotheses)
    edits = total = 0
    for ref, hyp in zip(references, hypotheses):
        ref_chars, hyp_chars = normalize_transcript(ref), normalize_transcript(hyp)
        edits += edit_distance(ref_chars, hyp_chars)
        total += len(ref_chars)
    return edits / total if total else 0.0


def intent_matches(hypothesis: str, reference_intent: Mapping[str, Any] | Intent, parser: IntentParser) -> bool:
    """True when ``parser`` reads ``hypothesis`` as the reference intent (an Intent or its to_dict())."""
    reference = reference_intent if isinstance(reference_intent, Intent) else Intent.from_dict(reference_intent)
    return parser.parse(hypothesis) == reference


@dataclass(frozen=True)
class SpeechScores:
    """Scores of a set of transcripts; accuracies are None when no clip of that kind has an intent."""

    wer: float  # corpus word error rate
    cer: float  # corpus character error rate
    sentence_accuracy: float  # fraction of clips transcribed exactly
    intent_accuracy: float | None  # over every clip with a reference intent
    command_intent_accuracy: float | None  # over commands
    question_intent_accuracy: float | None  # over questions
    clips: int
    commands: int
    questions: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_transcripts(
    references: Sequence[str],
    hypotheses: Sequence[str],
    intents: Sequence[Mapping[str, Any] | None] | None = None,
    parser: IntentParser | None = None,
) -> SpeechScores:
    """WER, CER, exact-sentence accuracy and intent accuracy (split by command/question) of hypotheses."""
    _check_pairs(references, hypotheses)
    intents = list(intents) if intents is not None else [None] * len(references)
    if len(intents) != len(references):
        raise ValueError(f"{len(intents)} intents for {len(references)} references; pass one (or None) per clip")
    parser = parser or IntentParser()
    hits: dict[str, list[bool]] = {"command": [], "question": []}
    for hyp, intent in zip(hypotheses, intents):
        if intent is not None:
            reference = Intent.from_dict(intent)
            hits[reference.kind].append(intent_matches(hyp, reference, parser))
    exact = sum(normalize_transcript(r) == normalize_transcript(h) for r, h in zip(references, hypotheses))

    def mean(values: list[bool]) -> float | None:
        return sum(values) / len(values) if values else None

    return SpeechScores(
        wer=word_error_rate(references, hypotheses),
        cer=char_error_rate(references, hypotheses),
        sentence_accuracy=exact / len(references) if references else 0.0,
        intent_accuracy=mean(hits["command"] + hits["question"]),
        command_intent_accuracy=mean(hits["command"]),
        question_intent_accuracy=mean(hits["question"]),
        clips=len(references),
        commands=len(hits["command"]),
        questions=len(hits["question"]),
    )
