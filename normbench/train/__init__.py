"""Training: build (model, optimizer, plan), the step, the one loop, lanes (plain, packed seeds,
data-parallel rank), the runner that records how each run ended, and the launchers."""
