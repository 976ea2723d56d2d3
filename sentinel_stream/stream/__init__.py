"""The Kafka side: consume, decode, score (through the engine), publish, commit.

:mod:`.pipeline` is the data path top to bottom; :mod:`.checkpoint` is where processed
becomes committed; :mod:`.decode` turns bytes into events or dead letters;
:mod:`.side_producer` sends what is not a verdict (forwarded HTTP events, LLM
explanations); :mod:`.kafka` holds the thin client plumbing.
"""
