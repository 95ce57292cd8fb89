"""Data sources: controlled targets of known entropy, and text.

Every source follows `Source` (see `base`): a pure function of
(seed, step, split) that returns this process's rows of a global batch.
"""

from lensjax.data.base import Source
from lensjax.data.targets import MarkovTarget
from lensjax.data.text import ByteText
from lensjax.data.text import TokenFile
from lensjax.data.text import default_corpus_bytes

__all__ = [
    "ByteText",
    "MarkovTarget",
    "Source",
    "TokenFile",
    "default_corpus_bytes",
]
