"""The demo's Python app: a table printed with a dependency pip installed at assemble time."""

from tabulate import tabulate

rows = [("builder", "kiln s2i"), ("daemon", "none"), ("root", "not needed")]
print(tabulate(rows, headers=("what", "how"), tablefmt="github"))
