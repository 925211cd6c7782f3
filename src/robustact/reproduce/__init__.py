"""`robustact reproduce`: a paper's table in one command — train what is not trained, evaluate what is not
evaluated, and write the table beside the published numbers with seeds and confidence intervals."""

from robustact.reproduce.plan import Plan, make_plan
from robustact.reproduce.tables import Table, list_tables, load_table

__all__ = ["Plan", "Table", "list_tables", "load_table", "make_plan"]
