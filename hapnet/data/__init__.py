"""Visit data: the data model (`visits`), its loaders split by source (`loaders` dispatches to
`mimic`, `long_csv`; `csv_stream`, `times` and `table` are their shared machinery), the synthetic
generator (`synth`), and what training reads from it: the vocabulary of observable codes
(`vocabulary`), the patient split (`splits`) and packed batches (`batches`)."""
