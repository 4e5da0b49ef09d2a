"""The task evaluator of a family: which test split it needs, and which TaskEvaluator measures it.

    problem = missing_test_split("speech", Path("runs/speech/data"))   # None when it can be measured
    evaluator = make_task_evaluator(prepared, Path("runs/vlm"), GateOptions(eval_samples=32))

The evaluators (``task_eval_vlm.py``, ``task_eval_speech.py``) build on ``task_eval.py``; this
module alone names them, so the imports run one way: here -> evaluators -> task_eval.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from export.task_eval import TEST_SPLIT, GateOptions, TaskEvaluator

if TYPE_CHECKING:
    from export.onnx_common import Prepared

logger = logging.getLogger(__name__)


def missing_test_split(family: str, data_dir: Path | None) -> str | None:
    """Why the task metric cannot be measured (no --data, no test split), or None when it can."""
    if data_dir is None:
        return "no --data given"
    root = Path(data_dir)
    if family == "vision-language":
        found = any((base / TEST_SPLIT / "annotations.jsonl").is_file() for base in (root, root / "scenes"))
        where = f"{root}/[scenes/]{TEST_SPLIT}/annotations.jsonl"
    elif family == "speech":
        found = (root / "speech" / TEST_SPLIT / "manifest.jsonl").is_file()
        where = f"{root}/speech/{TEST_SPLIT}/manifest.jsonl"
    else:
        return f"no task metric is defined for family {family!r}"
    return None if found else f"no {TEST_SPLIT} split in {root} (looked for {where})"


def make_task_evaluator(prepared: Prepared, data_dir: Path | None, options: GateOptions) -> TaskEvaluator | None:
    """The evaluator of `prepared`'s family on `data_dir`'s test split, or None (logged) when there is none."""
    problem = missing_test_split(prepared.family, data_dir)
    if problem is not None:
        logger.warning("int8 gate: %s, so it falls back to the golden outputs' cosine", problem)
        return None
    if prepared.family == "vision-language":
        from export.task_eval_vlm import VLMTaskEvaluator

        return VLMTaskEvaluator(prepared, Path(data_dir), options.samples_for(prepared.family), options.threads)  # type: ignore[arg-type]
    from export.task_eval_speech import SpeechTaskEvaluator

    return SpeechTaskEvaluator(prepared, Path(data_dir), options.samples_for(prepared.family), options.threads)  # type: ignore[arg-type]
