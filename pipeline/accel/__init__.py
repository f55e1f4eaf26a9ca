"""How the math runs fast: device and precision, bf16 first conv, CPU shards, CUDA graphs,
memory."""
