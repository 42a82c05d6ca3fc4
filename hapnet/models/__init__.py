"""Models: the one message-passing primitive (`propagation`), the code embedders (`embedder` base,
`plain` RNN and Rollup, `gram`, `hap` with its compiled plan `hap_plan`), the registry the CLI and
the library share (`registry`), the visit-level GRU (`predictor`), its losses (`losses`), and
GloVe pretraining (`glove`)."""
