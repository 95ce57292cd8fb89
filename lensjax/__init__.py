"""lensjax: train Transformers and measure how they compress and sparsify, inside the jitted step."""
__version__ = "0.1.0"
