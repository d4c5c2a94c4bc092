"""Model: backbone loading, tiny models, KV cache access, the student and the teacher."""
