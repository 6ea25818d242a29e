.PHONY: demo test bench
demo:  ## fit a neural field with the natural gradient on 2 ranks; writes results/demo/
	scripts/demo.sh
test:  ## ruff, then the test suite serially and under mpirun -n 2
	scripts/test.sh
bench:  ## Gram-assembly benchmark (prints ratios; see bench/RESULTS.md)
	scripts/bootstrap.sh && .venv/bin/python bench/gram.py
