"""Looking inside a trained run: next-visit prediction for a patient (`predict`), what a code's
embedding is made of (`explain`), and figures (`plots`)."""
