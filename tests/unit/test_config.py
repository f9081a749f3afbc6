import pytest

from vfiomond import config
from vfiomond.config import Config, ConfigError, from_dict, load, parse_listen


def test_defaults_without_a_file():
    assert load(None) == Config()
    assert parse_listen(Config().listen) == ("", config.DEFAULT_PORT)


def test_full_file(tmp_path):
    path = tmp_path / "vfiomond.toml"
    path.write_text('[daemon]\nlisten = "127.0.0.1:9999"\nlog_level = "debug"\n[probes]\nstrict = true\ndisable = ["pat_untrack"]\n'
                    'module_trampolines = true\n')
    assert load(str(path)) == Config(listen="127.0.0.1:9999", log_level="debug", strict=True, disable=("pat_untrack",),
                                     module_trampolines=True)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"daemon": {"listn": ":1"}}, "unknown key daemon.listn"),
        ({"deamon": {}}, "unknown section [deamon]"),
        ({"probes": {"strict": "yes"}}, "probes.strict must be a bool"),
        ({"probes": {"module_trampolines": 1}}, "probes.module_trampolines must be a bool"),
        ({"daemon": {"listen": True}}, "daemon.listen must be a str"),
        ({"daemon": {"log_level": "loud"}}, "daemon.log_level must be one of"),
        ({"probes": {"disable": ["no_such_probe"]}}, "unknown probe 'no_such_probe'"),
        ({"daemon": {"listen": "localhost"}}, "expected HOST:PORT"),
        ({"daemon": "x"}, "[daemon] must be a table"),
    ],
)
def test_bad_values_name_the_key(data, words):
    with pytest.raises(ConfigError) as e:
        from_dict(data, "config f.toml")
    message = str(e.value)
    assert words in message
    assert message.startswith("config f.toml") and "\n" not in message


def test_bad_toml_is_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[daemon\n")
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert str(e.value).startswith("config %s:" % path)


def test_missing_file():
    with pytest.raises(ConfigError, match="No such file"):
        load("/nonexistent/vfiomond.toml")


@pytest.mark.parametrize(
    "text, expected",
    [(":10119", ("", 10119)), ("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:9", ("::1", 9)), ("[::]:10119", ("::", 10119))],
)
def test_listen_forms(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text, expected", [("127.0.0.1:0080", ("127.0.0.1", 80)), ("[fe80::1%eth0]:9", ("fe80::1%eth0", 9))],
)
def test_more_listen_forms(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["10119", ":0", ":65536", "host:port", ""])
def test_bad_listen(text):
    with pytest.raises(ConfigError):
        parse_listen(text)


@pytest.mark.parametrize(
    "text, words",
    [
        (":\u00b2", "expected HOST:PORT"),  # str.isdigit() says yes, int() no
        (":\u0661\u0662", "expected HOST:PORT"),  # int() reads 12
        (":" + "1" * 5000, "expected HOST:PORT"),  # int() refuses more than 4300 digits
        ("a" * 64 + ":10119", "is not a valid host name"),  # IDNA: a label of 64
        ("a..b:10119", "is not a valid host name"),
        ("\udcff:10119", "unprintable character"),  # a lone surrogate (IDNA refuses it too)
        ("localhost\0x:10119", "unprintable character"),  # getaddrinfo() would read "localhost"
        ("[::1]::5", "expected [IPV6-ADDRESS]:PORT"),
        ("[localhost]:5", "expected [IPV6-ADDRESS]:PORT"),
        ("[::1:5", "expected [IPV6-ADDRESS]:PORT"),
        ("::1:5", "an IPv6 address goes in brackets"),
    ],
)
def test_bad_listen_is_one_line(text, words):
    with pytest.raises(ConfigError) as e:
        parse_listen(text)
    assert words in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize(
    "data, words",
    [
        ({"probes": {"disable": [[1]]}}, 'probes.disable takes probe names (strings), e.g. disable = ["pat_untrack"]'),
        ({"probes": {"disable": [{}]}}, "probes.disable takes probe names (strings)"),
        ({"probes": {"disable": [1]}}, "probes.disable takes probe names (strings)"),
        ({"\n": {}}, 'unknown section ["\\n"]'),
        ({"daemon": {"a\nb": 1}}, 'unknown key daemon."a\\nb"'),
        ({"probes": {"x\u2028y": 1}}, 'unknown key probes."x\\u2028y"'),
        ({"daemon": {"web_config_file": "a\0b"}}, "web config 'a\\x00b': a path cannot hold a NUL character"),
        ({"daemon": {"web_config_file": "/dev/zero"}}, "web config /dev/zero: not a regular file"),
        ({"daemon": {"web_config_file": "/nonexistent/a\nb"}}, "web config '/nonexistent/a\\nb': No such file"),
    ],
)
def test_bad_toml_values_are_one_line_errors(data, words):
    with pytest.raises(ConfigError) as e:
        from_dict(data, "config f.toml")
    assert words in str(e.value) and len(str(e.value).splitlines()) == 1


def test_shipped_default_config_is_valid_and_default():
    import pathlib

    shipped = pathlib.Path(__file__).resolve().parents[2] / "systemd" / "vfiomond.toml"
    assert load(str(shipped)) == Config()


@pytest.mark.parametrize(
    "data, words",
    [
        ({"pins": {"samples": 1}}, "pins.samples must be between 2 and 64"),
        ({"pins": {"verify_interval": 0}}, "pins.verify_interval must be between"),
        ({"pins": {"verify_interval": "1s"}}, "pins.verify_interval must be a number"),
    ],
)
def test_bad_pin_settings(data, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        from_dict(data, "config f.toml")
