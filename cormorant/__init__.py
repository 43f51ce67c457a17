"""cormorant: an LLM inference engine and server.

The public offline API lives here: `from cormorant import LLM, SamplingParams`.
"""
from cormorant.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # LLM pulls in torch and the model code; keep `import cormorant` cheap for the CLI and tests.
    if name == "LLM":
        from cormorant.frontend.llm import LLM

        return LLM
    raise AttributeError(name)
