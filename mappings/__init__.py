"""JSON an operator can also apply by hand: index template, search pipelines, Dashboards objects.

Kept as a package only so the installed code can read the same files (importlib.resources).
"""
