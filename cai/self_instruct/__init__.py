"""Self-Instruct prompt pools: the `grow` stage (`pool`), candidate parsing and `filters`, and `rouge` (ROUGE-L)."""
