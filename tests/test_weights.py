"""The weights manager against a loopback HTTP server: nothing unverified is ever kept or returned."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from audit import weights
from audit.cli import main
from audit.weights import WeightsEntry, WeightsError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB of deterministic bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/good.pt":
            body = PAYLOAD
        elif self.path == "/tampered.pt":
            body = PAYLOAD[:-1] + b"\x00"
        elif self.path == "/partial.pt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])  # then the connection closes early
            return
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def store(tmp_path, monkeypatch, server):
    monkeypatch.setenv("XRAY_AUDIT_HOME", str(tmp_path / "home"))
    entries = {
        "pinned": WeightsEntry("pinned", f"{server}/good.pt", "pinned.pt", SHA, len(PAYLOAD), "test"),
        "unpinned": WeightsEntry("unpinned", f"{server}/good.pt", "unpinned.pt", None, None, "test"),
        "tampered": WeightsEntry("tampered", f"{server}/tampered.pt", "tampered.pt", SHA, None, "test"),
        "partial": WeightsEntry("partial", f"{server}/partial.pt", "partial.pt", SHA, None, "test"),
        "offline": WeightsEntry("offline", "http://127.0.0.1:9/x.pt", "offline.pt", SHA, None, "test"),
    }
    monkeypatch.setattr(weights, "MANIFEST", entries)
    return weights.weights_dir()


def no_temps(d: Path) -> bool:
    return not any(p.name.startswith(".tmp-") for p in d.iterdir())


def test_fetch_verifies_then_renames(store):
    path = weights.fetch("pinned", progress=False)
    assert path == store / "pinned.pt" and path.read_bytes() == PAYLOAD
    assert weights.weights_path("pinned") == path
    assert weights.status("pinned").state == "ok"
    assert no_temps(store)


@pytest.mark.parametrize("name", ["tampered", "partial"])
def test_corrupt_or_partial_downloads_are_never_kept(store, name):
    with pytest.raises(WeightsError):
        weights.fetch(name, progress=False)
    assert not (store / f"{name}.pt").exists() and no_temps(store)


def test_offline_error_names_file_and_fix(store):
    with pytest.raises(WeightsError) as err:
        weights.fetch("offline", progress=False)
    assert "cannot download" in str(err.value) and "xray-audit weights import DIR" in str(err.value)
    with pytest.raises(WeightsError) as err:
        weights.weights_path("offline")
    msg = str(err.value)
    assert "offline.pt" in msg and "xray-audit weights fetch offline" in msg


def test_unpinned_needs_a_user_hash_which_is_recorded(store):
    with pytest.raises(WeightsError, match="pins no sha256"):
        weights.fetch("unpinned", progress=False)
    with pytest.raises(WeightsError, match="expected " + "0" * 64):
        weights.fetch("unpinned", sha256="0" * 64, progress=False)
    assert not (store / "unpinned.pt").exists()
    weights.fetch("unpinned", sha256=SHA.upper(), progress=False)
    assert weights.expected_sha256("unpinned") == SHA
    assert weights.weights_path("unpinned").read_bytes() == PAYLOAD


def test_hash_is_checked_on_every_path_lookup(store):
    weights.fetch("pinned", progress=False)
    (store / "pinned.pt").write_bytes(PAYLOAD[:-1] + b"\x01")  # bit rot after download
    with pytest.raises(WeightsError, match="corrupt"):
        weights.weights_path("pinned")
    assert weights.status("pinned").state == "corrupt"


def test_import_from_another_machine(store, tmp_path):
    src = tmp_path / "usb"
    src.mkdir()
    (src / "pinned.pt").write_bytes(PAYLOAD)
    (src / "unpinned.pt").write_bytes(PAYLOAD)
    imported, skipped = weights.import_dir(src)
    assert [n for n, _ in imported] == ["pinned"] and len(skipped) == 1 and "unpinned.pt" in skipped[0]
    imported, skipped = weights.import_dir(src, {"unpinned": SHA})
    assert {n for n, _ in imported} == {"pinned", "unpinned"} and not skipped
    (src / "tampered.pt").write_bytes(b"not the file")
    with pytest.raises(WeightsError, match="not imported"):
        weights.import_dir(src)
    assert not (store / "tampered.pt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="no known weights files"):
        weights.import_dir(empty)


def test_cli_commands(store, tmp_path, capsys):
    assert main(["-q", "weights", "fetch", "pinned"]) == 0
    assert main(["weights", "path", "pinned"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(store / "pinned.pt"))
    assert main(["weights", "verify"]) == 0
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "pinned" in out and "ok" in out and "missing" in out
    src = tmp_path / "usb"
    src.mkdir()
    (src / "unpinned.pt").write_bytes(PAYLOAD)
    assert main(["weights", "import", str(src), "--sha256", f"unpinned={SHA}"]) == 0
    assert main(["weights", "path", "offline"]) == 1


def test_real_manifest_is_consistent():
    for name, e in weights.MANIFEST.items():
        assert e.name == name and e.url.startswith("https://") and e.url.endswith(e.filename)
        assert e.sha256 is None or len(e.sha256) == 64
