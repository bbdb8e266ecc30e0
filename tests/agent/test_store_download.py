"""Downloads and installs with real files and real gRPC over loopback: resume, corruption,
digest mismatch, bad signatures, interrupted switches, restart clean-up."""

from __future__ import annotations

import hashlib
import json
import os

import grpc
import pytest

from agent import fsutil, store as store_mod
from agent.channel import auth_metadata
from agent.deployer import Deployer
from agent.download import DownloadError, Downloader
from agent.state import ReportedStateHolder
from agent.store import Store
from proto import fleet_pb2, fleet_pb2_grpc, signing
from tests.agent.helpers import FakeFleet, FakeServer, make_bundle
from tests.conftest import free_port

RS = fleet_pb2.ReportedState


@pytest.fixture
def fleet_server():
    fleet = FakeFleet()
    fleet.credentials["cred"] = "dev-1"
    server = FakeServer(fleet, free_port()).start()
    channel = grpc.insecure_channel(server.address)
    yield fleet, fleet_pb2_grpc.DeviceServiceStub(channel)
    channel.close()
    server.stop()


def _downloader(stub, data_dir, **kw):
    return Downloader(stub, auth_metadata("cred"), data_dir, retry_delay=0.01, **kw)


def _only_digest(bundle):
    v = bundle.manifest.variants[0]
    return v.digest, v.size_bytes, bundle.files[v.digest]


def test_download_verifies_and_resumes_from_part_file(tmp_path, fleet_server):
    fleet, stub = fleet_server
    bundle = make_bundle()
    digest, size, data = _only_digest(bundle)
    fleet.artifacts[digest] = data
    dl = _downloader(stub, tmp_path)
    # A previous process got 1500 bytes (verified chunks) before it was killed.
    dl.downloads.mkdir(parents=True)
    dl.part_path(digest).write_bytes(data[:1500])
    path = dl.fetch(digest, size)
    assert path.read_bytes() == data
    assert fleet.download_offsets == [1500]
    assert not dl.part_path(digest).exists()
    # Present now: a second fetch asks the server nothing.
    dl.fetch(digest, size)
    assert fleet.download_offsets == [1500]


def test_dropped_stream_resumes_at_last_verified_byte(tmp_path, fleet_server):
    fleet, stub = fleet_server
    digest, size, data = _only_digest(make_bundle())
    fleet.artifacts[digest] = data
    fleet.drop_after_bytes = 2048
    path = _downloader(stub, tmp_path).fetch(digest, size)
    assert path.read_bytes() == data
    assert fleet.download_offsets == [0, 2048]


def test_corrupted_chunk_is_rejected_and_part_deleted(tmp_path, fleet_server):
    fleet, stub = fleet_server
    digest, size, data = _only_digest(make_bundle())
    fleet.artifacts[digest] = data
    fleet.corrupt_chunk_at = 1024
    dl = _downloader(stub, tmp_path)
    with pytest.raises(DownloadError, match="fails its sha256 check"):
        dl.fetch(digest, size)
    assert not dl.part_path(digest).exists()
    assert list(dl.artifacts.iterdir()) == []


def test_final_digest_mismatch_is_rejected(tmp_path, fleet_server):
    fleet, stub = fleet_server
    digest, size, data = _only_digest(make_bundle())
    # Same size, different bytes: every chunk hash is right, the file is not.
    fleet.artifacts[digest] = bytes(reversed(data))
    dl = _downloader(stub, tmp_path)
    with pytest.raises(DownloadError, match="does not match the manifest"):
        dl.fetch(digest, size)
    assert not dl.part_path(digest).exists()
    assert list(dl.artifacts.iterdir()) == []


# -- the deployer: signature -> download -> verify -> install ---------------------------------

class _Activations:
    def __init__(self, fail=False):
        self.bundles = []
        self.fail = fail

    def __call__(self, bundle):
        if self.fail:
            raise RuntimeError("engine refused")
        self.bundles.append(bundle)


def _deployer(tmp_path, stub, trusted, activate=None):
    state = ReportedStateHolder()
    store = Store(tmp_path)
    deployer = Deployer(store, _downloader(stub, tmp_path), state, trusted, activate or _Activations(),
                        backoff_base=0.01, backoff_max=0.05)
    return deployer, store, state


def _serve(fleet, bundle):
    fleet.artifacts.update(bundle.files)


def test_deployer_installs_and_switches_pointer(tmp_path, fleet_server):
    fleet, stub = fleet_server
    bundle = make_bundle()
    _serve(fleet, bundle)
    activations = _Activations()
    deployer, store, state = _deployer(tmp_path, stub, [bundle.publisher_key], activations)
    deployer.apply(bundle.desired("dep-1"))
    _, reported = state.snapshot()
    assert reported.phase == RS.INSTALLED and reported.bundle_id == bundle.bundle_id, reported
    assert json.loads((tmp_path / "current.json").read_text())["bundle_id"] == bundle.bundle_id
    folder = tmp_path / "bundles" / bundle.bundle_id
    assert (folder / "manifest.json").read_bytes() == bundle.manifest_bytes
    for v in bundle.manifest.variants:
        assert (folder / v.file).read_bytes() == bundle.files[v.digest]
    assert [b.bundle_id for b in activations.bundles] == [bundle.bundle_id]
    assert store.verify_bundle(bundle.bundle_id, "dep-1", [bundle.publisher_key]).bundle_id == bundle.bundle_id


def test_deflated_variant_is_installed_as_its_onnx_file(tmp_path, fleet_server):
    """A variant shipped deflated (as the compressor stores sparse ones) downloads in its stored
    form, installs as the ONNX file, re-verifies at restart, and a damaged installed file is
    caught there too."""
    import zlib

    fleet, stub = fleet_server
    bundle = make_bundle(deflate=("int8",))
    _serve(fleet, bundle)
    deployer, store, state = _deployer(tmp_path, stub, [bundle.publisher_key])
    deployer.apply(bundle.desired("dep-1"))
    _, reported = state.snapshot()
    assert reported.phase == RS.INSTALLED, reported
    v = bundle.manifest.variant("int8")
    assert v.file == "model-int8.onnx.zlib" and v.model_file == "model-int8.onnx"
    installed = store.verify_bundle(bundle.bundle_id, "dep-1", [bundle.publisher_key])
    path = installed.variant_path("int8")
    assert path.name == "model-int8.onnx"
    assert path.read_bytes() == zlib.decompress(bundle.files[v.digest])        # the ONNX bytes
    assert store.has_artifact(v.digest)                                        # the stored form, for resume
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(store_mod.StoreError, match="model-int8.onnx does not match"):
        store.verify_bundle(bundle.bundle_id, "dep-1", [bundle.publisher_key])


def test_deflated_variant_that_inflates_wrong_fails_the_deployment(tmp_path, fleet_server):
    import dataclasses
    import zlib

    from proto.manifest import Manifest

    fleet, stub = fleet_server
    good = make_bundle(deflate=("int8",))
    v = good.manifest.variant("int8")
    # a signed manifest whose deflated file inflates to bytes it does not name
    lying = dataclasses.replace(v, decoded_digest="sha256:" + "0" * 64)
    manifest = dataclasses.replace(good.manifest, variants=tuple(lying if x.id == "int8" else x
                                                                 for x in good.manifest.variants))
    raw = manifest.to_bytes()
    bad = dataclasses.replace(good, manifest=Manifest.from_bytes(raw), manifest_bytes=raw,
                              signature=signing.sign(raw, good.key))
    _serve(fleet, bad)
    deployer, store, state = _deployer(tmp_path, stub, [bad.publisher_key])
    deployer.apply(bad.desired("dep-1"))
    _, reported = state.snapshot()
    assert reported.phase == RS.FAILED and "does not inflate to" in reported.error, reported
    assert store.read_current() is None
    assert zlib.decompress(bad.files[v.digest])            # the stored bytes themselves were fine


@pytest.mark.parametrize("tamper", ["manifest", "untrusted_key", "signature"])
def test_bad_signature_installs_nothing(tmp_path, fleet_server, tamper):
    fleet, stub = fleet_server
    bundle = make_bundle()
    _serve(fleet, bundle)
    trusted = [bundle.publisher_key]
    desired = bundle.desired()
    if tamper == "manifest":
        desired.manifest = desired.manifest.replace(b'"version":"1"', b'"version":"2"')
    elif tamper == "untrusted_key":
        trusted = [signing.public_key_bytes(signing.generate_private_key())]
    else:
        desired.signature = bytes(64)
    deployer, store, state = _deployer(tmp_path, stub, trusted)
    deployer.apply(desired)
    _, reported = state.snapshot()
    assert reported.phase == RS.FAILED
    assert "manifest rejected" in reported.error
    assert fleet.download_offsets == []
    assert not (tmp_path / "current.json").exists()
    assert list((tmp_path / "bundles").iterdir()) == []


def test_corrupt_download_fails_deployment_and_keeps_previous(tmp_path, fleet_server):
    fleet, stub = fleet_server
    old, new = make_bundle(version="1"), make_bundle(seeds=(4, 5, 6), version="2")
    _serve(fleet, old)
    deployer, store, state = _deployer(tmp_path, stub, [old.publisher_key, new.publisher_key])
    deployer.apply(old.desired("dep-1"))
    fleet.artifacts.update({d: bytes(reversed(b)) for d, b in new.files.items()})    # wrong bytes
    deployer.apply(new.desired("dep-2"))
    _, reported = state.snapshot()
    assert reported.phase == RS.FAILED and "does not match the manifest" in reported.error
    assert reported.bundle_id == old.bundle_id
    assert json.loads((tmp_path / "current.json").read_text())["bundle_id"] == old.bundle_id
    assert not (tmp_path / "bundles" / new.bundle_id).exists()
    for d in new.files:
        assert not store.has_artifact(d)


def test_activation_failure_keeps_previous_bundle(tmp_path, fleet_server):
    fleet, stub = fleet_server
    bundle = make_bundle()
    _serve(fleet, bundle)
    deployer, store, state = _deployer(tmp_path, stub, [bundle.publisher_key], _Activations(fail=True))
    deployer.apply(bundle.desired())
    _, reported = state.snapshot()
    assert reported.phase == RS.FAILED and "engine refused" in reported.error
    assert not (tmp_path / "current.json").exists()


# -- crash safety ----------------------------------------------------------------------------

def _install_from_files(store, bundle, deployment="dep-1"):
    for digest, data in bundle.files.items():
        (store.artifacts / digest.removeprefix("sha256:")).write_bytes(data)
    return store.install(bundle.manifest_bytes, bundle.signature, bundle.publisher_key, bundle.manifest,
                         deployment)


@pytest.mark.parametrize("step", ["bundle_dir", "pointer"])
def test_interrupted_switch_leaves_old_bundle_active(tmp_path, monkeypatch, step):
    old, new = make_bundle(version="1"), make_bundle(seeds=(4, 5, 6), version="2")
    keys = [old.publisher_key]
    store = Store(tmp_path)
    _install_from_files(store, old)

    class Crash(Exception):
        pass

    if step == "bundle_dir":
        # Die after the first variant file is linked into the new folder.
        real_link = os.link
        calls = []

        def flaky_link(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                raise Crash()
            return real_link(src, dst)
        monkeypatch.setattr(store_mod.os, "link", flaky_link)
    else:
        # Die between writing the new pointer's temp file and renaming it over current.json.
        real_replace = os.replace

        def flaky_replace(src, dst):
            if str(dst).endswith("current.json"):
                raise Crash()
            return real_replace(src, dst)
        monkeypatch.setattr(fsutil.os, "replace", flaky_replace)
    with pytest.raises(Crash):
        _install_from_files(store, new, "dep-2")
    monkeypatch.undo()

    pointer = json.loads((tmp_path / "current.json").read_text())
    assert pointer["bundle_id"] == old.bundle_id
    # "Restart": stray temp files go, and the active bundle is the old one, verified.
    active = Store(tmp_path).recover(keys)
    assert active is not None and active.bundle_id == old.bundle_id
    leftovers = [p for p in tmp_path.rglob("*") if fsutil.is_temp_name(p.name)]
    assert leftovers == []


def test_restart_cleans_temp_files_and_reverifies_active(tmp_path):
    bundle = make_bundle()
    store = Store(tmp_path)
    _install_from_files(store, bundle)
    stray = [tmp_path / f".current.json{fsutil.TMP_MARKER}999",
             tmp_path / "bundles" / f".abc{fsutil.TMP_MARKER}999",
             tmp_path / "profiles" / f".x.json{fsutil.TMP_MARKER}1"]
    stray[0].write_text("{")
    stray[1].mkdir()
    (stray[1] / "model.onnx").write_bytes(b"half")
    stray[2].write_text("{")
    part = tmp_path / "downloads" / ("a" * 64 + ".part")
    part.write_bytes(b"resume me")
    active = Store(tmp_path).recover([bundle.publisher_key])
    assert active is not None and active.bundle_id == bundle.bundle_id
    assert not any(p.exists() for p in stray)
    assert part.exists()          # partial downloads are kept: they resume


def test_restart_refuses_a_corrupted_active_bundle(tmp_path):
    bundle = make_bundle()
    store = Store(tmp_path)
    installed = _install_from_files(store, bundle)
    path = installed.variant_path("int8")
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert Store(tmp_path).recover([bundle.publisher_key]) is None
    assert not (tmp_path / "current.json").exists()
    # The bundle file is a hard link of the artifact: the damaged artifact is dropped so that
    # the next install downloads a fresh copy instead of trusting it.
    digest = bundle.manifest.variant("int8").digest
    assert hashlib.sha256(path.read_bytes()).hexdigest() != digest[7:]
    assert not store.verify_artifact(digest, len(data))
    assert not store.has_artifact(digest)
