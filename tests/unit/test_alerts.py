from vfiomond.alerts import PIN_MISMATCH, AlertSink


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_journal_fields():
    sent = []
    sink = AlertSink(send=lambda msg, **f: sent.append((msg, f)), clock=Clock())
    assert sink.alert(PIN_MISMATCH, "hello", PID=7, IOVA="0x1000")
    msg, fields = sent[0]
    assert msg == "hello"
    assert fields["MESSAGE_ID"] == PIN_MISMATCH.message_id and len(PIN_MISMATCH.message_id) == 32
    assert fields["PRIORITY"] == "2" and fields["SYSLOG_IDENTIFIER"] == "vfiomond"
    assert fields["PID"] == "7" and fields["IOVA"] == "0x1000"


def test_rate_limit_counts_what_it_drops_and_refills():
    clock = Clock()
    sent = []
    sink = AlertSink(send=lambda msg, **f: sent.append(msg), clock=clock)
    results = [sink.alert(PIN_MISMATCH, str(i)) for i in range(PIN_MISMATCH.per_minute + 5)]
    assert results.count(True) == PIN_MISMATCH.per_minute
    assert sink.sent["pin_mismatch"] == PIN_MISMATCH.per_minute and sink.suppressed["pin_mismatch"] == 5
    clock.now += 60.0 / PIN_MISMATCH.per_minute
    assert sink.alert(PIN_MISMATCH, "again")


def test_no_journal_falls_back_to_stderr(capsys):
    def refused(msg, **fields):
        raise ConnectionRefusedError(111, "Connection refused")

    sink = AlertSink(send=refused, clock=Clock())
    assert sink.alert(PIN_MISMATCH, "lost?", PID=1)
    assert sink.alert(PIN_MISMATCH, "second", PID=2)
    err = capsys.readouterr().err
    assert "vfiomond alert pin_mismatch: lost? PID=1" in err and "second PID=2" in err


def test_a_scrape_during_the_send_sees_the_alert_and_its_refusal_together(capsys):
    """The counts a scrape reads (counts()) change once the journal answered: never an
    alert counted as sent whose refusal is not counted yet (a lab scrape saw that)."""
    seen = []

    def refused(msg, **fields):
        seen.append(sink.counts()["pin_mismatch"])  # what a scrape during the send reads
        raise ConnectionRefusedError(111, "Connection refused")

    sink = AlertSink(send=refused, clock=Clock())
    assert sink.alert(PIN_MISMATCH, "refused", PID=1)
    assert seen == [(0, 0, 0)] and sink.counts()["pin_mismatch"] == (1, 0, 1)
    assert "vfiomond alert pin_mismatch: refused PID=1" in capsys.readouterr().err


def test_every_alert_kind_has_a_catalog_entry():
    import pathlib

    from vfiomond.alerts import KINDS

    catalog = (pathlib.Path(__file__).resolve().parents[2] / "systemd" / "vfiomond.catalog").read_text()
    ids = [kind.message_id for kind in KINDS]
    assert len(set(ids)) == len(ids)
    for kind in KINDS:
        assert "-- %s\n" % kind.message_id in catalog, kind.name
