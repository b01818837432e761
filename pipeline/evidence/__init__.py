"""The evidence sweep: fair learning rates from one grid, paired seeds, the on-policy phase, the live
arm and the learning curve over one cache (``distill evidence``); its tables and figure."""
