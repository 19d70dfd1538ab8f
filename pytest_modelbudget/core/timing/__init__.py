"""Timing: warm-up, synchronized blocks and CUDA graphs (:mod:`.timer`), machine-speed probes
(:mod:`.probes`), the CUDA allocator peak and the largest batch that fits (:mod:`.cuda_memory`)."""
