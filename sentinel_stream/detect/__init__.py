"""The anomaly detector: pure logic, numbers in and numbers out.

Nothing here imports Kafka, HTTP or the service's configuration
(``tests/unit/test_layering.py`` keeps it so), so the service, the HTTP handler and
``evaluate`` share one detector and it can be tested and benchmarked alone.

Import from the modules (``detect.detector``, ``detect.params``, ...): this package
re-exports nothing, so that reading the settings (``detect.params``) does not load
scikit-learn, and the main process, which scores, never does.

- :mod:`.features`: the telemetry columns and their log space;
- :mod:`.params`: the knobs and their defaults;
- :mod:`.window`, :mod:`.baseline`: what a route remembers and what is typical for it;
- :mod:`.rules`, :mod:`.forest`, :mod:`.kernels`, :mod:`.threshold`: how rows are scored;
- :mod:`.refit`: where models are fitted;
- :mod:`.detector`: the policy that ties them together.
"""
