# vfiomond: see README.md.  Everything runs with the distribution's Python,
# whose BCC bindings (python3-bpfcc) vfiomond uses.
PYTHON ?= /usr/bin/python3
SUITE ?= bookworm
SCENARIO ?= standard
METRICS_OUT ?=
EXTRA ?=
PROMETHEUS ?=
LAB = $(PYTHON) tests/lab/lab.py --suite $(SUITE) --scenario $(SCENARIO) $(if $(EXTRA),--extra $(EXTRA)) $(if $(PROMETHEUS),--prometheus)

.PHONY: deps demo lab test test-all unit lab-images bench reliability install deb rpm clean

deps:
	@scripts/install-deps.sh

# The main job: the standard scenario in the lab, then QEMU as the VFIO user (scenario
# vmm: its VM "lab-vm" stays up with both devices), kept up for a browser, scraped by
# a real Prometheus server that loads the alert rules.
demo: deps
	$(PYTHON) tests/lab/lab.py --suite $(SUITE) --scenario standard+vmm --demo --prometheus

lab: deps
	@test -n "$(METRICS_OUT)" || { echo "usage: make lab SUITE=bookworm|trixie|bullseye|sid|iommufd METRICS_OUT=FILE [SCENARIO=standard|vmm|dpdk|iommufd|pin-mismatch|losses|faults|soak|memlock|interrupts|iommu-faults|bar-dmabuf|device-health|module-fexit|kernel-log|idle|hotplug|systemd|bench] [EXTRA=DIR] [PROMETHEUS=1]"; exit 2; }
	$(LAB) --metrics-out $(METRICS_OUT)

# Unit tests, then the lab tests on Debian 12 (6.1), Debian 13 (6.12) and the iommufd build.
# Guest images are built in the background from the first test on (tests/lab/images.sh);
# the run ends with where its time went (tests/lab/timings.py), kept in $(TIMINGS).
TIMINGS = $(CURDIR)/build/test-timings.tsv
test:
	@mkdir -p build && : >$(TIMINGS)
	@start=$$(date +%s); scripts/install-deps.sh && printf 'deps\tinstall-deps.sh\t%s\n' $$(( $$(date +%s) - start )) >>$(TIMINGS)
	VFIOMOND_LAB_TIMINGS=$(TIMINGS) $(PYTHON) -m pytest -v tests/unit tests/lab

# Also Debian 11 (5.10), sid (the newest kernel the archive has; it moves daily)
# and iommufd (trixie with a 7.2 built with CONFIG_IOMMUFD: the first run builds
# that kernel while the other suites boot, then it is cached).
test-all: deps
	VFIOMOND_LAB_SUITES="bookworm trixie bullseye sid iommufd" $(PYTHON) -m pytest -v tests/unit tests/lab

unit: deps
	$(PYTHON) -m pytest -q tests/unit

lab-images: deps
	tests/lab/images.sh bookworm trixie bullseye sid iommufd

# Overhead and footprint next to funclatency and a minimal BCC program (benchmarks/RESULTS.md);
# on trixie unless SUITE is given.
bench: deps
	$(PYTHON) benchmarks/bench.py --suite $(if $(filter command line,$(origin SUITE)),$(SUITE),trixie)
	$(PYTHON) benchmarks/scrape.py

# Soak, fault and load figures of benchmarks/RELIABILITY.md: the soak scenario in the lab
# (1,000,000 BAR faults, 100,000 MAP_DMA/UNMAP_DMA pairs, 50,000 live mappings, 100
# concurrent scrapers), then the scrape cost with 100,000 open files on this host.
reliability: deps
	@mkdir -p build
	$(PYTHON) tests/lab/lab.py --suite $(if $(filter command line,$(origin SUITE)),$(SUITE),trixie) --scenario soak \
		--timeout 2400 --metrics-out build/soak.prom --out build/soak
	$(PYTHON) benchmarks/scrape.py --host-fds 100000 --scrapes 20
	$(PYTHON) benchmarks/scrape.py --host-fds 100000 --scrapes 20 --full-scan

# The Debian package (debian/): build/deb/vfiomond_VERSION_all.deb, lintian-clean.
deb: deps
	scripts/build-deb.sh

# vfiomond on this host from the checkout, as a systemd service (see docs/operating.md, "The package and the service").
install:
	PYTHON=$(PYTHON) scripts/install.sh

clean:
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
