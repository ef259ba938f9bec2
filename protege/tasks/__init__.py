"""Tasks: curated examples, their discovery into recurring tasks, and the datasets made of them.

Read by training (the datasets) and by serving (the router's task profiles); imports neither.
"""
