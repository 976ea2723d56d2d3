"""The HTTP side server: the v1 ``/analyze-flow`` API, probes, metrics and OpenAPI.

It scores through the same engine as the Kafka loop and reads the loop's state from
:mod:`sentinel_stream.status`; it never imports the loop itself.
"""
