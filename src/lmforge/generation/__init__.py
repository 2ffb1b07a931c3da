"""Text generation: logit processors, the KV-cached decoding loop, beam search."""
