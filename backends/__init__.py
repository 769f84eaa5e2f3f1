"""TensorFlow model worker, MNIST export and a local pool launcher.

This is the only package of tfserving-lb that imports TensorFlow, and even here
TensorFlow is imported lazily: `worker` loads it in a background thread after the
REST port is open, `export_mnist` when it runs. `pool` and `digits` never import
it, so the proxy demo in `lb/` can use them.

Modules:
    worker        `tfserving-lb worker` entry point (CLI, signals, server lifetime)
    rest          the TF Serving REST surface on aiohttp
    registry      models, versions, labels, states (no TensorFlow)
    runtime       SavedModel loading and signature calls (TensorFlow)
    tensors       JSON <-> numpy for predict requests and replies (no TensorFlow)
    examples      classify/regress: JSON examples -> tf.train.Example, results
    errors        the exception tree and its HTTP status codes
    export_mnist  `tfserving-lb export-mnist DIR`
    digits        sklearn's bundled digits as 28x28 MNIST-like inputs (no TensorFlow)
    pool          start/stop local worker subprocesses (no TensorFlow)
"""
