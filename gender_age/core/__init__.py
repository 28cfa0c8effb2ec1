"""The base layer: image decoding and limits (images), checkpoint files written atomically and
loaded with weights_only (checkpointing), the runtime (device, threads, bf16, torchrun; runtime,
cores). Imports no other part of the package."""
