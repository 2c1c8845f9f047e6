"""Example datasets built into retrieval tasks (corpus, questions, training files)."""
