"""The robot domain: spoken robot commands and scene questions, outside the runtime core.

- ``phrases``: the command grammar's table (vocabulary, phrasings per intent frame, prefixes and
  suffixes), which the parser, the decoding grammar and the training data all read;
- ``transcripts``: ``normalize_transcript``, the canonical text of a transcript;
- ``intent``: ``Intent`` and ``IntentParser`` (transcript -> intent);
- ``grammar``: the grammar as a ``tinymm.decoding.grammar_graph.Grammar`` for constrained CTC decoding,
  and the grammar names a bundle may declare in ``model.grammar``;
- ``demo_checks``: whether a caption of a scene names only what the scene holds (``tinymm demo``).

The speech pipeline uses this domain only when a bundle asks for it: a ``model.grammar`` it
decodes with, or the ``command`` task. Nothing here is imported by ``import tinymm``.
"""
