"""The bottom floor: shared math that imports only jax and numpy.

Everything above (the model, the loss, the lenses, the analyses) computes its
entropies, masked means, tree norms and Adam moments here, once.
"""
