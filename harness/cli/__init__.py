"""The command line face (``python -m harness``): the core commands (commands), what every
command shares (base), git bisect run steps (bisect_run), doctor, and CI shards (shards).
"""
