"""Bundled ontology data (installed as `hapnet.ontologies`); see PROVENANCE.md."""
