"""Helpers for tests and benchmarks, never used by the library itself: tiny random checkpoints built from
the real Qwen3 tokenizer (:mod:`.checkpoints`) and a real ``lbnl serve`` process on loopback (:mod:`.server`)."""
