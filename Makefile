# imgnorm: `make demo` runs the main job on a small dataset, `make test` runs the tests.
# Both create the virtual environment .venv on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PHOTOS ?= ../shared/data/photos

.PHONY: demo test bench clean

# Every optional extra is installed here, so the tests cover all of them.
EXTRAS := test,plot,16bit,dask,zarr

# Re-install when the metadata or the C kernel changes (an editable install
# does not rebuild the extension by itself).
$(VENV)/.installed: pyproject.toml setup.py imgnorm/_kernels.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# A small dataset made on the spot (no downloads): an MNIST-layout .npz and a
# JPEG folder with train/val splits and classes; then statistics and HDF5.
demo: $(VENV)/.installed
	rm -rf demo && mkdir -p demo
	$(BIN)/python benchmarks/datasets.py demo
	$(BIN)/imgnorm stats demo/digits.npz
	$(BIN)/imgnorm stats demo/shapes -o demo/shapes-stats.json
	$(BIN)/imgnorm standardize demo/digits.npz -o demo/digits.h5
	$(BIN)/imgnorm standardize demo/shapes --size 64 --resize-mode crop --per-channel -o demo/shapes.h5 --stats-out demo/shapes-fit.json
	$(BIN)/imgnorm inspect demo/shapes.h5 --plot demo/shapes-hist.png

# Benchmarks measure imgnorm as users install it: a regular (not editable)
# install in its own environment, with compiled bytecode and no editable
# import hook; the peers run with the same interpreter and packages.
BENCH_VENV := .venv-bench
bench:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet '.[bench]'
	$(BENCH_VENV)/bin/pip install --quiet --no-deps --force-reinstall .
	$(BENCH_VENV)/bin/python benchmarks/run.py --photos $(PHOTOS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) demo .bench .pytest_cache *.egg-info
