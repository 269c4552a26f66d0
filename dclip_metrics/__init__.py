"""`evaluate` modules of the DCLIP package (load one with `evaluate.load("dclip_metrics/<module>")`)."""
