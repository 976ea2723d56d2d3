"""Why a verdict is what it is: rule text and attributions (pure), and the LLM client.

Only the pure part is re-exported here: :mod:`sentinel_stream.explain.llm` speaks HTTP
(aiohttp) and is imported by name by the doors that use it, so that the engine, which
needs the rule text, never pulls in an HTTP client.
"""

from sentinel_stream.explain.rule_text import NORMAL_EXPLANATION, attributions, explain, rule_text

__all__ = ["NORMAL_EXPLANATION", "attributions", "explain", "rule_text"]
