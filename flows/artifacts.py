"""Prefect artifacts the flows publish: the accuracy table, read through the `model_accuracy` view."""

from __future__ import annotations


from prefect.artifacts import create_table_artifact

import warehouse
from warehouse.connection import query_text



def publish_accuracy(db: str | None, dataset: str | None = None, panel: str | None = None) -> list[dict]:
    with warehouse.reader(db) as con:
        cur = con.execute(query_text("accuracy_artifact.sql"), [dataset, panel])
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    scope = " ".join(x for x in (f"dataset {dataset}" if dataset else "", f"panel {panel}" if panel else "") if x)
    create_table_artifact(key="model-accuracy", table=rows,
                          description=f"Model accuracy ({scope or 'all datasets and panels'}), "
                                      f"from the model_accuracy view of {warehouse.resolve_db(db).resolve()}")
    return rows
