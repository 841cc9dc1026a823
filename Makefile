.PHONY: setup demo test test-fast bench
setup:      ## create .venv with everything installed
	bash scripts/setup_env.sh
demo:       ## the main job: the toy-world demo, offline, CPU, no key (extra flags: make demo ARGS="...")
	bash scripts/demo.sh $(ARGS)
test:       ## every test tier (what CI runs)
	bash scripts/test.sh
test-fast:  ## unit tests only
	bash scripts/test.sh -m "not slow"
bench:      ## every benchmark, JSON figures with ratios against in-run baselines
	bash scripts/setup_env.sh
	@for b in benchmarks/*.py; do echo "== $$b"; .venv/bin/python $$b || exit 1; done
