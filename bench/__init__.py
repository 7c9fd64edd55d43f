"""Issue 5's benchmark of the whole pipeline on real Redis and a real SMTP server: ``python -m bench.run``."""
