import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    from hypothesis import HealthCheck, settings
    from hypothesis.configuration import set_hypothesis_home_dir
except ImportError:  # only the property tests (test_properties*.py) need it
    pass
else:
    # Nothing written into the repository (no example database; hypothesis's own cache
    # in the temporary directory), no deadline (a loaded machine is slow), and few
    # enough examples that the property tests take seconds.
    set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "vfiomond-hypothesis-%d" % os.getuid()))
    settings.register_profile("vfiomond", database=None, deadline=None, max_examples=100,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.load_profile("vfiomond")
    # A longer search, now and then: pytest --hypothesis-profile=vfiomond-long tests/unit/test_properties*.py
    settings.register_profile("vfiomond-long", settings.get_profile("vfiomond"), max_examples=3000)
