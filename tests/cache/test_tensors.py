"""cache.tensors: numpy is loaded when a tensor is first decoded, not at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_numpy_is_loaded_by_the_first_tensor_key_not_by_the_proxy() -> None:
    """About 15 MB of idle RSS for a proxy whose cache is off, or never sees a tensor
    key; the float32 range check keeps numpy's bound without asking numpy for it."""
    code = (
        "import sys\n"
        "from lb.config import parse_config\n"
        "from lb.server import Proxy\n"
        "cfg = parse_config({'listen': {'grpc': None}, 'cache': {'backend': 'memory'},\n"
        "                    'nodes': [{'name': 'n', 'rest': 'http://127.0.0.1:9'}]})\n"
        "Proxy(cfg)\n"
        "assert 'numpy' not in sys.modules, 'numpy was imported at start-up'\n"
        "from cache.errors import TensorDecodeError\n"
        "from cache.tensors import decode\n"
        "t = decode([[1.5, 2], [3, 4]], 'DT_FLOAT')\n"
        "import numpy as np\n"
        "assert t.shape == (2, 2) and t.data == np.array([[1.5, 2], [3, 4]], '<f4').tobytes()\n"
        "top = float(np.finfo(np.float32).max)\n"
        "assert decode([top], 'DT_FLOAT').data == np.array([top], '<f4').tobytes()\n"
        "try:\n"
        "    decode([top * 1.0000001], 'DT_FLOAT')\n"
        "except TensorDecodeError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('a value beyond float32 was accepted')\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
