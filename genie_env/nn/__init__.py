"""Building blocks: the ST-transformer with its temporal KV cache, and vector quantisation."""
from genie_env.nn.st_transformer import STTransformer, TemporalKVCache
from genie_env.nn.vq import VectorQuantizer

__all__ = ["STTransformer", "TemporalKVCache", "VectorQuantizer"]
