"""Training and evaluation: settings (`config`), what a run is built from (`setup`), optimisers
(`optim`), one step (`step`), the loop (`trainer`), data-parallel runs (`distributed`), scoring
(`evaluation`, `metrics`), run folders (`runs`) and their names (`naming`), seed sweeps (`seeds`)
and the paper's table (`reproduction`)."""
