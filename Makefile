# Two entry points (README): `make demo` and `make test`. Both create and fill .venv when needed.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-all venv clean-demo

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch first, pinned: pip takes these two from the local disk on the project's machines
	$(VPY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	# torchcodec (a benchmark peer) loads the system FFmpeg libraries: apt's ffmpeg when root; elsewhere
	# the benchmark skips that peer and says what to install
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ldconfig -p | grep -q 'libavcodec\.so\.'; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null) \
	  || echo "warning: apt-get install ffmpeg failed; the torchcodec benchmark peer will be skipped"; fi
	$(VPY) -m pip install -q -e '.[dev,text]'
	# the dev extras (torchcodec, spdl, decord) must not have replaced the pinned torch
	$(VPY) -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '2.14.1' else 'torch changed to ' + torch.__version__)"
	touch $(STAMP)

venv: $(STAMP)

# The built-in demo: generate -> shard (same builder as a real run; the JPEG frames format, the faster
# of the two end to end here: README) -> train with torchrun (2 CPU ranks, DALI CPU backend) ->
# zero-shot evaluation -> table. Re-running resumes every stage (after an update that changed the
# build options, `make clean-demo` first: the builder refuses a folder holding another build).
DEMO := data/demo
demo: $(STAMP)
	test -f $(DEMO)/splits.json || $(VPY) -m sharding.demo $(DEMO) --workers 2
	$(VPY) -m sharding.build --input $(DEMO)/train.csv --layout list --split train --out $(DEMO)/shards/train --dataset demo --videos-per-shard 200 --codec jpeg
	$(VPY) -m sharding.build --input $(DEMO)/unseen.csv --layout list --split eval --out $(DEMO)/shards/unseen --dataset demo --codec jpeg
	$(VPY) -m sharding.build --input $(DEMO)/seen_test.csv --layout list --split eval --out $(DEMO)/shards/seen_test --dataset demo --codec jpeg
	$(VENV)/bin/torchrun --standalone --nproc_per_node=2 trainer/main.py configs/demo.yaml
	$(VPY) -m trainer.report runs/demo

test: $(STAMP)
	$(VPY) -m pytest -q

test-all: $(STAMP)
	$(VPY) -m pytest -q -m ''

clean-demo:
	rm -rf runs/demo data/demo
