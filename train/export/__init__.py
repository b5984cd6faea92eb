"""llmtrain.train.export: model directories for other runtimes (GGUF for llama.cpp)."""
