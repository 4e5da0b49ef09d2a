"""Grammar-constrained CTC decoding (tinymm/decoding/grammar.py) and its use by the speech pipeline."""

from __future__ import annotations

import itertools
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from fake_sessions import ScriptedSpeechEncoder

from tinymm.decoding.grammar import GrammarDecoder
from tinymm.decoding.grammar_graph import Grammar, GrammarGraph, GrammarTemplate
from tinymm.errors import BundleError, InputError
from tinymm.pipelines.speech import SpeechPipeline, SpeechSettings
from tinymm.preprocess.audio import AudioPreprocessor
from tinymm.preprocess.config import AudioConfig, TextConfig
from tinymm.preprocess.text import Tokenizer
from tinymm.robot.grammar import GRAMMAR_NAMES, ROBOT_COMMANDS, builtin_grammar, check_grammar_name, robot_commands
from tinymm.robot.intent import Intent
from train.data.speech_grammar import all_intents, all_transcripts

ROOT = Path(__file__).resolve().parents[1]
CHAR_TOKENIZER = ROOT / "train" / "students" / "speech" / "speech.model"  # the committed student's characters
RATE = 16000
N_MELS = 16
BLANK = 0

# A toy character vocabulary for tiny graphs: blank 0, the word boundary 1, then the letters.
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def toy_encode(text: str) -> list[int]:
    """Each word as the boundary piece then its letters, as a sentencepiece character model spells it."""
    return [i for word in text.split() for i in (1, *(2 + LETTERS.index(c) for c in word))]


def toy_decode(ids) -> str:
    return "".join(" " if i == 1 else LETTERS[i - 2] for i in ids).strip()


def peaky(labels: list[int], vocab: int, low: float = -8.0, seed: int = 0) -> np.ndarray:
    """(frames, vocab) log-softmax that says ``labels`` (one per frame), with a little noise."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 0.3, (len(labels), vocab)) + low
    logits[np.arange(len(labels)), labels] = 0.0
    return (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)


def ctc_path(ids: list[int], blank_frames: int = 1) -> list[int]:
    """Each token for one frame then ``blank_frames`` blanks, with blanks before and after."""
    return [BLANK, BLANK] + [x for i in ids for x in (i, *[BLANK] * blank_frames)] + [BLANK]


@pytest.fixture(scope="module")
def char_tokenizer() -> Tokenizer:
    config = TextConfig(tokenizer="speech.model", context_length=256, bos_id=1, eos_id=2, pad_id=0, unk_id=3,
                        add_bos=False, add_eos=False)
    return Tokenizer(CHAR_TOKENIZER, config)


@pytest.fixture(scope="module")
def robot_graph() -> GrammarGraph:
    return GrammarGraph.from_grammar(robot_commands(), toy_encode)


# -- the graph ----------------------------------------------------------------------------------


def test_the_graph_says_every_transcript_of_a_sample_of_intents(robot_graph):
    intents = all_intents()
    sample = intents[::7]
    assert len(sample) >= 30 and {i.kind for i in sample} == {"command", "question"}
    for intent in sample:
        for transcript in all_transcripts(intent):
            assert robot_graph.accepts(toy_encode(transcript)), transcript
    # Compact: ~30k sentences in well under 2k token nodes (each a transcript would be ~30).
    assert robot_graph.num_nodes < 2000


@pytest.mark.parametrize("sentence", [
    "go forward three meter", "stop stop", "pick up the red", "is there a orange star", "turn left please please",
    "what color is the star please", "", "go",
])
def test_the_graph_refuses_sentences_outside_the_grammar(robot_graph, sentence):
    assert not robot_graph.accepts(toy_encode(sentence))


def test_the_real_tokenizer_spells_the_grammar(char_tokenizer):
    decoder = GrammarDecoder.from_tokenizer(robot_commands(), char_tokenizer, BLANK)
    for text in ("could you please pick up the orange diamond now", "is there an orange star", "now freeze"):
        assert decoder.graph.accepts(char_tokenizer.encode(text)), text


def test_a_tokenizer_that_cannot_spell_the_grammar_is_refused(tmp_path):
    from fake_sessions import COMMAND_SENTENCES, train_sentencepiece

    path = train_sentencepiece(tmp_path / "speech.model", COMMAND_SENTENCES * 4, 40)  # no "z" (freeze) in there
    tokenizer = Tokenizer(path, TextConfig(tokenizer="speech.model", context_length=256, add_bos=False))
    with pytest.raises(BundleError, match="cannot spell"):
        GrammarDecoder.from_tokenizer(robot_commands(), tokenizer, BLANK)


# -- Viterbi -------------------------------------------------------------------------------------


def test_viterbi_recovers_an_in_grammar_sentence(robot_graph):
    decoder = GrammarDecoder(robot_graph, BLANK)
    sentence = "hey robot where is the yellow triangle located"
    ids = toy_encode(sentence)
    hyp = decoder.decode(peaky(ctc_path(ids, blank_frames=2), 2 + len(LETTERS)))
    assert hyp.tokens == tuple(ids) and toy_decode(hyp.tokens) == sentence
    assert hyp.in_grammar and hyp.gap_per_token < 0.1 and 0.9 < hyp.confidence <= 1.0
    assert list(hyp.frames) == [2 + 3 * k for k in range(len(ids))]  # where each token starts


def test_viterbi_snaps_a_near_miss_into_the_grammar(robot_graph):
    decoder = GrammarDecoder(robot_graph, BLANK)
    heard = ctc_path(toy_encode("nowtake the red star"))  # a merged word: no boundary between "now" and "take"
    hyp = decoder.decode(peaky(heard, 2 + len(LETTERS)))
    assert toy_decode(hyp.tokens) == "now take the red star" and hyp.in_grammar


def test_a_repeated_letter_needs_a_blank():
    graph = GrammarGraph.build([GrammarTemplate("command", (("al", "all"),))], {}, toy_encode)
    decoder = GrammarDecoder(graph, BLANK)
    b, a, l = 1, toy_encode("a")[1], toy_encode("l")[1]  # noqa: E741
    vocab = 2 + len(LETTERS)
    merged = decoder.decode(peaky([b, a, l, l, BLANK, BLANK], vocab))  # "l l": one l, as CTC collapses it
    separate = decoder.decode(peaky([b, a, l, BLANK, l, BLANK], vocab))  # "l _ l": two
    assert toy_decode(merged.tokens) == "al" and toy_decode(separate.tokens) == "all"
    assert merged.in_grammar and separate.in_grammar
    # Four frames hold "al" but not "all" (it needs five: b a l _ l).
    assert toy_decode(decoder.decode(peaky([b, a, l, l], vocab)).tokens) == "al"


def _brute_force(log_probs: np.ndarray, sentences: set[tuple[int, ...]]) -> dict[tuple[int, ...], float]:
    """Best-path score of every sentence, by scoring every frame labelling and collapsing it."""
    best: dict[tuple[int, ...], float] = {}
    frames, vocab = log_probs.shape
    for path in itertools.product(range(vocab), repeat=frames):
        collapsed = tuple(k for k, (x, prev) in enumerate(zip(path, (None, *path[:-1]))) if x != prev and x != BLANK)
        labels = tuple(path[k] for k in collapsed)
        if labels in sentences:
            score = float(log_probs[np.arange(frames), path].sum(dtype=np.float64))
            best[labels] = max(best.get(labels, -np.inf), score)
    return best


def test_viterbi_agrees_with_brute_force_ctc_scoring():
    # Toy letters a, b over a tiny grammar: [prefix "b"] ("a" | "ab" | "aa") ("b" | "ba") [suffix "a"].
    encode = {"a": [1, 2], "b": [1, 3], "ab": [1, 2, 3], "aa": [1, 2, 2], "ba": [1, 3, 2]}
    templates = [GrammarTemplate("command", (("a", "ab", "aa"), ("b", "ba")))]
    graph = GrammarGraph.build(templates, {"command": (("b",), ("a",))}, lambda text: [
        i for word in text.split() for i in encode[word]])
    sentences = {tuple(i for w in (*pre, x, y, *post) for i in encode[w])
                 for pre in ((), ("b",)) for x in ("a", "ab", "aa") for y in ("b", "ba") for post in ((), ("a",))}
    assert all(graph.accepts(s) for s in sentences)
    assert not graph.accepts(encode["a"]) and not graph.accepts(encode["b"] + encode["b"])
    decoder = GrammarDecoder(graph, BLANK)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        logits = rng.normal(0.0, 2.0, (7, 4))
        log_probs = (logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))).astype(np.float32)
        scores = _brute_force(log_probs, sentences)
        hyp = decoder.decode(log_probs)
        best = max(scores, key=scores.get)
        assert hyp.score == pytest.approx(scores[best], abs=1e-4)
        assert scores[hyp.tokens] == pytest.approx(scores[best], abs=1e-4)  # the decoded sentence scores it
        assert hyp.free_score == pytest.approx(float(log_probs.max(axis=1).sum()), abs=1e-5)


def test_too_few_frames_for_any_sentence(robot_graph):
    hyp = GrammarDecoder(robot_graph, BLANK).decode(peaky([1, 2, 3], 2 + len(LETTERS)))  # "stop" needs 5 frames
    assert hyp.tokens == () and not hyp.in_grammar and hyp.gap_per_token == np.inf and hyp.confidence == 0.0
    empty = GrammarDecoder(robot_graph, BLANK).decode(np.zeros((0, 28), np.float32))
    assert empty.tokens == () and not empty.in_grammar


def test_a_decoder_reused_across_clip_lengths_and_threads_gives_the_same_answers(robot_graph):
    from concurrent.futures import ThreadPoolExecutor

    from tinymm.decoding.grammar import WORKSPACE_MAX_FRAMES

    vocab = 2 + len(LETTERS)
    short = peaky(ctc_path(toy_encode("stop")), vocab, seed=1)
    long = peaky(ctc_path(toy_encode("turn left"), blank_frames=WORKSPACE_MAX_FRAMES // 8), vocab, seed=2)
    assert long.shape[0] > WORKSPACE_MAX_FRAMES  # too long for the kept work area: a temporary one
    expected = [GrammarDecoder(robot_graph, BLANK).decode(x) for x in (short, long)]
    decoder = GrammarDecoder(robot_graph, BLANK)
    for clip, want in [(short, expected[0]), (long, expected[1]), (short, expected[0]), (long, expected[1])]:
        assert decoder.decode(clip) == want
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(decoder.decode, [short, long] * 4)) == expected * 4
    assert [toy_decode(h.tokens) for h in expected] == ["stop", "turn left"]


def test_speech_outside_the_grammar_is_flagged(robot_graph):
    decoder = GrammarDecoder(robot_graph, BLANK)
    hyp = decoder.decode(peaky(ctc_path(toy_encode("what time is it outside")), 2 + len(LETTERS)))
    assert not hyp.in_grammar and hyp.gap_per_token > decoder.max_gap_per_token
    assert GrammarDecoder(robot_graph, BLANK, max_gap_per_token=1e9).decode(
        peaky(ctc_path(toy_encode("what time is it outside")), 2 + len(LETTERS))).in_grammar


def test_bad_inputs_are_refused(robot_graph):
    decoder = GrammarDecoder(robot_graph, BLANK)
    with pytest.raises(InputError, match="frames, vocab"):
        decoder.decode(np.zeros((4, 5), np.float32))  # fewer labels than the grammar's tokens
    with pytest.raises(InputError, match="frames, vocab"):
        decoder.decode(np.zeros((2, 4, 28), np.float32))
    with pytest.raises(BundleError, match="blank"):
        GrammarDecoder(robot_graph, blank_id=1)  # the word boundary is a grammar token
    with pytest.raises(ValueError, match="max_gap_per_token"):
        GrammarDecoder(robot_graph, BLANK, max_gap_per_token=-1.0)


# -- the manifest key and the pipeline -----------------------------------------------------------


def test_manifest_grammar_key(char_tokenizer):
    assert SpeechSettings.from_model_info({"blank_id": 0}, char_tokenizer).grammar is None
    assert SpeechSettings.from_model_info({"grammar": ROBOT_COMMANDS}, char_tokenizer).grammar == ROBOT_COMMANDS
    for bad in ("robot_commands", 3, ["robot-commands"]):
        with pytest.raises(BundleError, match="robot-commands") as info:
            SpeechSettings.from_model_info({"grammar": bad}, char_tokenizer)
        assert repr(bad) in str(info.value)
    assert check_grammar_name(None) is None and GRAMMAR_NAMES == (ROBOT_COMMANDS,)
    assert builtin_grammar(ROBOT_COMMANDS).name == ROBOT_COMMANDS
    with pytest.raises(BundleError, match="unknown grammar 'chess-moves'.*upgrade tinymm"):
        builtin_grammar("chess-moves")


def test_the_decoder_takes_any_domain_grammar():
    # The decoding layer knows no domain: a grammar is templates and affixes, whoever builds them.
    grammar = Grammar("lights", (GrammarTemplate("command", (("lights",), ("on", "off"))),),
                      {"command": (("please",), ())})
    graph = GrammarGraph.from_grammar(grammar, toy_encode)
    assert graph.accepts(toy_encode("please lights off")) and graph.accepts(toy_encode("lights on"))
    assert not graph.accepts(toy_encode("lights")) and not graph.accepts(toy_encode("lights on please"))


def _noise(seconds: float) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(int(seconds * RATE))).astype(np.float32)


def _pipeline(tokenizer: Tokenizer, *sentences: str, **info) -> SpeechPipeline:
    paths = [[x for i in tokenizer.encode(s) for x in (i, BLANK)] for s in sentences]
    encoder = ScriptedSpeechEncoder(paths, tokenizer.vocab_size, N_MELS)
    return SpeechPipeline(encoder=encoder, preprocessor=AudioPreprocessor(AudioConfig(n_mels=N_MELS, max_seconds=10.0)),
                          tokenizer=tokenizer, model_info={"blank_id": BLANK, **info})


def test_the_pipeline_decodes_with_the_bundle_grammar(char_tokenizer):
    heard = ("go forwrd three meters", "what time is it outside")  # a misspelling; words outside the grammar
    speech = _pipeline(char_tokenizer, *heard, grammar=ROBOT_COMMANDS)
    near, outside = speech.transcribe([_noise(1.6), _noise(1.6)], sample_rate=RATE)
    assert (near.text, near.raw_text, near.in_grammar) == ("go forward three meters", heard[0], True)
    assert near.token_ids == tuple(char_tokenizer.encode("go forward three meters"))
    assert (outside.text, outside.in_grammar) == (heard[1], False)  # the free transcript
    assert near.to_dict()["in_grammar"] is True and outside.to_dict()["in_grammar"] is False
    command = speech.command([_noise(1.6)], sample_rate=RATE)[0]
    assert command.intent == Intent(action="move", direction="forward", distance_m=3)
    assert command.to_dict()["in_grammar"] is True

    speech.use_grammar = False
    free = speech.transcribe(_noise(1.6), sample_rate=RATE)
    assert (free.text, free.in_grammar) == (heard[0], None)
    assert _pipeline(char_tokenizer, heard[0]).transcribe(_noise(1.6), sample_rate=RATE).in_grammar is None


def test_the_free_transcript_of_speech_outside_the_grammar_keeps_the_lexicon(char_tokenizer):
    speech = _pipeline(char_tokenizer, "whaat time is it", grammar=ROBOT_COMMANDS, lexicon=["what", "time", "is", "it"])
    result = speech.transcribe(_noise(1.2), sample_rate=RATE)
    assert (result.text, result.raw_text, result.in_grammar) == ("what time is it", "whaat time is it", False)


def test_cli_no_grammar_flag(tmp_path, capsys):
    pytest.importorskip("onnx", reason="writing the test bundle needs the onnx package (pip install 'tinymm[dev]')")
    from fake_sessions import write_speech_bundle

    from tinymm.cli import main

    bundle = write_speech_bundle(tmp_path / "speech", CHAR_TOKENIZER, vocab=31, n_mels=N_MELS,  # 31 character pieces
                                 model_extra={"grammar": ROBOT_COMMANDS})
    clip = tmp_path / "clip.wav"
    with wave.open(str(clip), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(RATE)
        w.writeframes((_noise(1.0) * 32767).astype(np.int16).tobytes())

    def run(*argv: str) -> dict:
        capsys.readouterr()
        assert main([*argv, str(clip), "--bundle", str(bundle), "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    assert isinstance(run("transcribe")["results"][0]["in_grammar"], bool)
    assert run("transcribe", "--no-grammar")["results"][0]["in_grammar"] is None
    assert isinstance(run("command")["in_grammar"], bool)
    assert run("command", "--no-grammar")["in_grammar"] is None
