"""Speed-ups of a training step, each proven equal to the plain computation by the tests in tests/train/speed/:

- batching.py: length-grouped batches and padding-free packing of rows;
- chunked_loss.py: the LM head and cross-entropy in chunks (no full logits tensor);
- row_attention.py: attention that stays within each packed row;
- lora_linear.py, lora_dropout.py: one autograd function per LoRA layer; dropout drawn only where it drops;
- offload.py: checkpointed layer inputs kept in pinned CPU memory (CUDA);
- kernels.py: liger-kernel's fused RoPE, RMSNorm and SwiGLU (CUDA, optional).
"""
