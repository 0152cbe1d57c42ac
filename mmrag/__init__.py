"""mmrag: multimodal retrieval-augmented generation over image collections.

The data flows one way: corpus -> encoders -> vector index -> retrieval -> tasks -> metrics.
"""

__version__ = "0.1.0"
