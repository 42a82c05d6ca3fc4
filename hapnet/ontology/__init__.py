"""Ontologies as leveled DAGs: code normalisation (`codes`), the DAG (`graph`), file formats
(`formats`), built-ins and `load_ontology` (`builtins`), and the per-level edge lists that HAP and
GRAM run on (`hierarchy`)."""
