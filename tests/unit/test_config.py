import pytest

from vfiomond import config
from vfiomond.config import Config, ConfigError, from_dict, load, parse_listen


def test_defaults_without_a_file():
    assert load(None) == Config()
    assert parse_listen(Config().listen) == ("", config.DEFAULT_PORT)


def test_full_file(tmp_path):
    path = tmp_path / "vfiomond.toml"
    path.write_text('[daemon]\nlisten = "127.0.0.1:9999"\nlog_level = "debug"\n[probes]\nstrict = true\ndisable = ["pat_untrack"]\n')
    assert load(str(path)) == Config(listen="127.0.0.1:9999", log_level="debug", strict=True, disable=("pat_untrack",))


@pytest.mark.parametrize(
    "data, words",
    [
        ({"daemon": {"listn": ":1"}}, "unknown key daemon.listn"),
        ({"deamon": {}}, "unknown section [deamon]"),
        ({"probes": {"strict": "yes"}}, "probes.strict must be a bool"),
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


@pytest.mark.parametrize("text", ["10119", ":0", ":65536", "host:port", ""])
def test_bad_listen(text):
    with pytest.raises(ConfigError):
        parse_listen(text)


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
