"""Embeddings of every code of an ontology: learned from the structure alone or exported from a
run (`structure`), how much of the ontology they recover (`reconstruction`), nearest codes
(`neighbors`), and the export formats (`formats`)."""
