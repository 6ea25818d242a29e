.PHONY: demo test bench
demo:  ## the headline case on 2 ranks: κ on a plate with a hole from 80 sensors; results/diffusion-hole/
	scripts/demo.sh
test:  ## ruff, then the test suite serially and under mpirun -n 2
	scripts/test.sh
bench:  ## Gram-assembly benchmark (prints ratios; see bench/RESULTS.md)
	scripts/bootstrap.sh && .venv/bin/python bench/gram.py
