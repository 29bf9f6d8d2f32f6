"""The weights manager against a loopback HTTP server: nothing unverified is ever kept or returned.

The server speaks HTTP Range (or pretends not to) and can cut a download short, so resumed and
restarted downloads are exercised; the manifest is swapped for entries pinned to the server's bytes.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from audit import weights
from audit.cli import main
from audit.weights import FileSpec, WeightsEntry, WeightsError, manifest

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB of deterministic bytes
SHA = hashlib.sha256(PAYLOAD).hexdigest()
CUT = 300_000  # where the flaky route breaks off


class _Handler(http.server.BaseHTTPRequestHandler):
    flaky_calls = 0

    def _send(self, body: bytes, start: int = 0, honour_range: bool = True) -> None:
        rng = self.headers.get("Range")
        if rng and honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            start = 0
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def do_GET(self):
        route = self.path.strip("/").split(".")[0]
        if route == "good":
            self._send(PAYLOAD)
        elif route == "tampered":  # same size, one byte changed
            self._send(PAYLOAD[:-1] + b"\x00")
        elif route == "short":  # a complete response that is not the whole file
            self._send(PAYLOAD[:-10])
        elif route == "long":
            self._send(PAYLOAD + b"extra")
        elif route == "wrongrange" and not self.headers.get("Range"):
            self._send(PAYLOAD)
        elif route == "wrongrange":  # answers every range request with the file from byte 0
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif route in ("flaky", "flaky_norange"):
            _Handler.flaky_calls += 1
            if _Handler.flaky_calls == 1:  # first try: promise everything, send CUT bytes, hang up
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD[:CUT])
                return
            self._send(PAYLOAD, honour_range=route == "flaky")
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _entry(name: str, url: str, sha: str | None = SHA, size: int | None = len(PAYLOAD), **kw) -> WeightsEntry:
    return WeightsEntry(name, "test", (FileSpec(f"{name}.pt", sha, size),), url=url, public_sources=2, **kw)


@pytest.fixture
def store(tmp_path, monkeypatch, server):
    monkeypatch.setenv("XRAY_AUDIT_HOME", str(tmp_path / "home"))
    _Handler.flaky_calls = 0
    entries = {
        "pinned": _entry("pinned", f"{server}/good.pt", default=True),
        "unpinned": _entry("unpinned", f"{server}/good.pt", None, None),
        "tampered": _entry("tampered", f"{server}/tampered.pt"),
        "short": _entry("short", f"{server}/short.pt"),
        "long": _entry("long", f"{server}/long.pt"),
        "flaky": _entry("flaky", f"{server}/flaky.pt"),
        "flaky_norange": _entry("flaky_norange", f"{server}/flaky_norange.pt"),
        "offline": _entry("offline", "http://127.0.0.1:9/x.pt"),
        "wrongrange": _entry("wrongrange", f"{server}/wrongrange.pt"),
        "trusted": _entry("trusted", f"{server}/good.pt", None, None),
    }
    monkeypatch.setattr(manifest, "MANIFEST", entries)
    return weights.weights_dir()


def no_temps(d: Path) -> bool:
    return not any(p.name.startswith(".tmp-") or p.name.endswith(".part") for p in d.iterdir())


def test_fetch_verifies_then_renames(store):
    path = weights.fetch("pinned", progress=False)
    assert path == store / "pinned.pt" and path.read_bytes() == PAYLOAD
    assert weights.weights_path("pinned") == path
    st = weights.status("pinned")
    assert st.state == "ok" and st.pin == "release" and st.weights_sha256 == SHA
    assert no_temps(store)


def test_hash_mismatch_is_discarded(store):
    with pytest.raises(WeightsError, match="does not match its pin.*sha256"):
        weights.fetch("tampered", progress=False)
    assert not (store / "tampered.pt").exists() and no_temps(store)


@pytest.mark.parametrize("name, words", [("short", "bytes, expected"), ("long", "larger than the pinned")])
def test_size_mismatch_is_caught_before_hashing(store, name, words, monkeypatch):
    hashed = []
    monkeypatch.setattr(weights.store, "sha256_file", lambda p: hashed.append(p) or "0" * 64)
    with pytest.raises(WeightsError, match=words):
        weights.fetch(name, progress=False)
    assert not (store / f"{name}.pt").exists() and no_temps(store)
    assert not [p for p in hashed if Path(p).name.startswith(name) and name == "long"]


def test_truncated_download_is_kept_as_part_and_resumed(store):
    with pytest.raises(WeightsError, match="broke off|ended after") as err:
        weights.fetch("flaky", progress=False)
    assert "run the same command again to resume" in str(err.value)
    part = store / "flaky.pt.part"
    assert part.stat().st_size == CUT and not (store / "flaky.pt").exists()
    assert weights.status("flaky").state == "missing"  # a part is never a usable file
    path = weights.fetch("flaky", progress=False)  # the server honours Range: only the rest is sent
    assert path.read_bytes() == PAYLOAD and not part.exists()


def test_interrupted_download_restarts_when_the_server_ignores_range(store):
    with pytest.raises(WeightsError):
        weights.fetch("flaky_norange", progress=False)
    path = weights.fetch("flaky_norange", progress=False)  # 200 instead of 206: start over, not append
    assert path.read_bytes() == PAYLOAD and no_temps(store)


def test_a_range_the_client_did_not_ask_for_is_never_stitched_on(store):
    (store / "wrongrange.pt.part").write_bytes(PAYLOAD[:CUT])
    with pytest.raises(WeightsError, match="range we did not ask for"):
        weights.fetch("wrongrange", progress=False)
    assert not (store / "wrongrange.pt.part").exists()  # the next try asks for the whole file
    assert weights.fetch("wrongrange", progress=False).read_bytes() == PAYLOAD


def test_trust_never_resumes_a_stale_part(store):
    # A captive-portal page left from an earlier try would otherwise be pinned as the file's start.
    (store / "trusted.pt.part").write_bytes(b"<html>please log in</html>")
    path = weights.fetch("trusted", trust=True, progress=False)
    assert path.read_bytes() == PAYLOAD and weights.status("trusted").weights_sha256 == SHA


def test_a_trusted_hash_from_elsewhere_replaces_a_first_download_pin(store):
    weights.fetch("trusted", trust=True, progress=False)
    assert weights.status("trusted").pin == "user-trust"
    # Already downloaded and matching: the pin is still recorded (and upgraded), not skipped.
    weights.fetch("trusted", sha256=SHA, progress=False)
    assert weights.status("trusted").pin == "user-sha256"


def test_offline_error_names_file_and_fix(store):
    with pytest.raises(WeightsError) as err:
        weights.fetch("offline", progress=False)
    assert "cannot download" in str(err.value) and "xray-audit weights import DIR" in str(err.value)
    with pytest.raises(WeightsError) as err:
        weights.weights_path("offline")
    msg = str(err.value)
    assert "offline.pt" in msg and "xray-audit weights fetch offline" in msg


def test_unpinned_needs_sha256_or_trust(store):
    with pytest.raises(WeightsError, match="pins no sha256.*--trust"):
        weights.fetch("unpinned", progress=False)
    with pytest.raises(WeightsError, match="expected " + "0" * 64):
        weights.fetch("unpinned", sha256="0" * 64, progress=False)
    assert not (store / "unpinned.pt").exists()
    weights.fetch("unpinned", sha256=SHA.upper(), progress=False)
    st = weights.status("unpinned")
    assert st.state == "ok" and st.pin == "user-sha256" and weights.expected_sha256("unpinned") == SHA


def test_trust_records_the_first_download_as_the_users_pin(store, capsys, server):
    assert main(["-q", "weights", "fetch", "unpinned", "--trust"]) == 0
    out = capsys.readouterr().out
    assert SHA in out and f"{len(PAYLOAD):,} bytes" in out and "pinned by you on first download" in out
    pins = json.loads((store / "pins.json").read_text())["unpinned"]
    assert pins["how"] == "trust" and pins["source"] == f"{server}/good.pt" and len(pins["date"]) == 10
    assert pins["files"]["unpinned.pt"] == {"sha256": SHA, "size": len(PAYLOAD)}
    st = weights.status("unpinned")
    assert st.pin == "user-trust" and "pinned by you on first download" in st.pin_note
    assert "not independently verified" in st.pin_note
    # From now on the pin protects later runs: a changed file is refused, by size before hash.
    (store / "unpinned.pt").write_bytes(PAYLOAD[:-1])
    assert weights.status("unpinned").state == "mismatch"
    assert main(["weights", "list"]) == 0
    assert "pinned by you on first download" in capsys.readouterr().out


def test_hash_is_checked_on_every_path_lookup(store):
    weights.fetch("pinned", progress=False)
    (store / "pinned.pt").write_bytes(PAYLOAD[:-1] + b"\x01")  # bit rot after download, same size
    with pytest.raises(WeightsError, match="do not match their pin"):
        weights.weights_path("pinned")
    assert weights.status("pinned").state == "mismatch"


def test_import_from_another_machine(store, tmp_path):
    src = tmp_path / "usb"
    src.mkdir()
    (src / "pinned.pt").write_bytes(PAYLOAD)
    (src / "unpinned.pt").write_bytes(PAYLOAD)
    report = weights.import_dir(src)
    assert [n for n, _ in report.imported] == ["pinned"]
    assert len(report.skipped) == 1 and "unpinned.pt" in report.skipped[0] and "--trust" in report.skipped[0]
    report = weights.import_dir(src, {"unpinned": SHA})
    assert {n for n, _ in report.imported} == {"pinned", "unpinned"} and not report.skipped
    assert weights.status("unpinned").pin == "user-sha256"
    (src / "tampered.pt").write_bytes(b"not the file")
    report = weights.import_dir(src)
    assert report.mismatched and "tampered" in report.mismatched[0]
    assert not (store / "tampered.pt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsError, match="no known weights files"):
        weights.import_dir(empty)


def test_import_trust_pins_what_it_finds(store, tmp_path):
    src = tmp_path / "usb"
    src.mkdir()
    (src / "unpinned.pt").write_bytes(PAYLOAD)
    report = weights.import_dir(src, trust=True)
    assert [n for n, _ in report.imported] == ["unpinned"]
    st = weights.status("unpinned")
    assert st.state == "ok" and st.pin == "user-trust" and str(src) in st.pin_note


def test_import_without_dir_searches_the_users_caches(store, tmp_path, monkeypatch):
    home = tmp_path / "user"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    xrv = home / ".torchxrayvision" / "models_data"
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    xrv.mkdir(parents=True)
    hub.mkdir(parents=True)
    (xrv / "pinned.pt").write_bytes(PAYLOAD)
    (xrv / "unpinned.pt").write_bytes(PAYLOAD)
    (hub / "tampered.pt").write_bytes(PAYLOAD[:-1] + b"\x00")  # a different version than the pin
    report = weights.import_dir()
    assert report.searched == [xrv, hub, tmp_path / "hf"]
    assert [n for n, _ in report.imported] == ["pinned"]
    assert any("unpinned" in s and "--trust" in s for s in report.skipped)
    assert any("tampered" in m for m in report.mismatched)
    assert main(["weights", "import"]) == 1  # a wrong file in a cache is worth an exit status


def test_verify_checks_default_entries_and_names_the_fix(store, capsys):
    assert main(["weights", "verify"]) == 1  # empty store: the default entry is missing
    captured = capsys.readouterr()
    assert captured.out.startswith("missing") and "pinned" in captured.out
    assert "xray-audit weights fetch pinned" in captured.err
    weights.fetch("pinned", progress=False)
    assert main(["weights", "verify"]) == 0
    assert capsys.readouterr().out.startswith("ok")
    (store / "pinned.pt").write_bytes(b"x")
    assert main(["weights", "verify", "pinned", "unpinned"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("mismatch") and "1 bytes, expected" in lines[0]
    assert lines[1].startswith("missing") and "--trust" in captured.err


def test_cli_commands(store, tmp_path, capsys):
    assert main(["-q", "weights", "fetch", "pinned"]) == 0
    assert main(["weights", "path", "pinned"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(store / "pinned.pt"))
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "pinned by this release" in out and "missing" in out and "not pinned" in out
    src = tmp_path / "usb"
    src.mkdir()
    (src / "unpinned.pt").write_bytes(PAYLOAD)
    assert main(["weights", "import", str(src), "--sha256", f"unpinned={SHA}"]) == 0
    assert main(["weights", "path", "offline"]) == 1
    with pytest.raises(SystemExit) as exit_:  # argparse: --trust and --sha256 exclude each other
        main(["weights", "fetch", "unpinned", "--trust", "--sha256", SHA])
    assert exit_.value.code == 2


def test_real_manifest_pins():
    m = manifest.MANIFEST
    assert m["densenet121-res224-all"].files[0] == FileSpec(
        "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        "56524913dd16a906422e8d8b66a7a5c46be1d82eb7ac012d8103776f1aa68899",
        28_382_008,
    )
    assert m["densenet121-res224-mimic_ch"].public_sources == 1
    assert weights.status("densenet121-res224-mimic_ch").pin == "release-one-source"
    assert m["pspnet-chestx-det"].files[0].size == 272_988_989
    inception = m["inception-v3-fid"].files[0]
    assert inception.sha256.startswith("6726825d") and inception.size == 95_628_359
    assert "pt_inception-2015-12-05-6726825d.pth" in m["inception-v3-fid"].aliases
    rad = m["rad-dino"]
    assert rad.repo == "microsoft/rad-dino" and rad.revision == "110cbc18d5133582e320b43d53bf5c44e410c936"
    assert {f.filename for f in rad.files} == {"model.safetensors", "config.json", "preprocessor_config.json"}
    assert weights.default_entries() == ["densenet121-res224-all", "pspnet-chestx-det", "inception-v3-fid"]
    for name, e in m.items():
        assert e.name == name
        assert e.hub or (e.url.startswith("https://") and e.url.endswith(e.filename))
        assert all(f.sha256 is None or len(f.sha256) == 64 for f in e.files)
    for name in ("nih", "pc", "chex", "rsna", "mimic_nb"):  # no published hash was found for these
        assert not m[f"densenet121-res224-{name}"].released_pins()
    assert weights.entry(f"hf:{rad.repo}@{rad.revision}") is rad
    with pytest.raises(WeightsError, match="40-hex commit"):
        weights.entry("hf:facebook/dinov2-base@main")
