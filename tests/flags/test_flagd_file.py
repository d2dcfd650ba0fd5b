"""The flagd file backend, read back the way a service reads it: the OpenFeature flagd provider.

Protects atomic rewrites, idempotence, the flagd file shape and the service's own flags.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.errors import FlagBackendError
from monitor.flags.flagd_file import FLAGD_SCHEMA, FlagdFileBackend
from tests.conftest import wait_for
from tests.services.availability import missing

SERVICE_FLAGS: dict[str, Any] = {
    "$schema": FLAGD_SCHEMA,
    "flags": {
        "checkout-ml": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "on",
        },
        "fraud-mode": {
            "state": "ENABLED",
            "variants": {"ml": "ml", "rules": "rules"},
            "defaultVariant": "ml",
        },
        "banner-color": {
            "state": "ENABLED",
            "variants": {"red": "#f00", "blue": "#00f"},
            "defaultVariant": "red",
            "targeting": {"if": [{"==": [{"var": "tier"}, "gold"]}, "blue", None]},
        },
    },
}


def assert_flagd_shape(document: dict[str, Any]) -> None:
    """The constraints of https://flagd.dev/schema/v0/flags.json a writer can break."""
    assert document["$schema"] == FLAGD_SCHEMA
    assert isinstance(document["flags"], dict)
    for key, flag in document["flags"].items():
        assert flag["state"] in ("ENABLED", "DISABLED"), key
        variants = flag["variants"]
        assert isinstance(variants, dict) and variants, key
        assert flag["defaultVariant"] in variants, key
        kinds = {
            "number" if type(v) in (int, float) else type(v).__name__ for v in variants.values()
        }
        # The schema has one variant type per flag: boolean, string, number or object.
        assert len(kinds) == 1, key


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture
def flags_file(tmp_path: Path) -> Path:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(SERVICE_FLAGS, indent=2))
    return path


@pytest.fixture
def flagd_client(flags_file: Path) -> Iterator[Any]:
    """An OpenFeature client over the flagd provider in file mode, as a service runs it."""
    try:
        from openfeature import api
        from openfeature.contrib.provider.flagd import FlagdProvider
        from openfeature.contrib.provider.flagd.config import ResolverType
    except ImportError as err:  # pragma: no cover - the dev extra installs it
        missing(f"openfeature-provider-flagd unavailable: {err}")
    provider = FlagdProvider(
        resolver_type=ResolverType.FILE, offline_flag_source_path=str(flags_file)
    )
    api.set_provider(provider)
    try:
        yield api.get_client()
    finally:
        api.shutdown()


@pytest.mark.integration
async def test_boolean_flip_is_seen_by_flagd_provider_in_file_mode(
    flags_file: Path, flagd_client: Any
) -> None:
    await wait_for(
        lambda: flagd_client.get_boolean_value("checkout-ml", False) is True,
        what="provider loaded the service's file",
    )
    backend = FlagdFileBackend(flags_file)

    await backend.set("checkout-ml", False)

    await wait_for(
        lambda: flagd_client.get_boolean_value("checkout-ml", True) is False,
        what="provider sees checkout-ml off",
    )
    assert await backend.get("checkout-ml") is False


@pytest.mark.integration
async def test_string_value_and_new_flag_are_seen_by_flagd_provider(
    flags_file: Path, flagd_client: Any
) -> None:
    backend = FlagdFileBackend(flags_file)

    await backend.set("fraud-mode", "human-review")
    await backend.set("fraud-fallback", True)

    await wait_for(
        lambda: flagd_client.get_string_value("fraud-mode", "default") == "human-review",
        what=lambda: (
            "provider sees fraud-mode=human-review (it sees "
            f"{flagd_client.get_string_value('fraud-mode', 'default')!r})"
        ),
    )
    await wait_for(
        lambda: flagd_client.get_boolean_value("fraud-fallback", False) is True,
        what="provider sees the created fraud-fallback flag on",
    )
    assert await backend.get("fraud-mode") == "human-review"


async def test_set_keeps_the_services_other_flags_and_variants_untouched(flags_file: Path) -> None:
    backend = FlagdFileBackend(flags_file)

    await backend.set("fraud-mode", "rules")

    document = read_json(flags_file)
    assert_flagd_shape(document)
    assert document["flags"]["banner-color"] == SERVICE_FLAGS["flags"]["banner-color"]
    assert document["flags"]["checkout-ml"] == SERVICE_FLAGS["flags"]["checkout-ml"]
    # The service's variant "rules" is reused, not duplicated.
    assert document["flags"]["fraud-mode"]["variants"] == {"ml": "ml", "rules": "rules"}
    assert document["flags"]["fraud-mode"]["defaultVariant"] == "rules"


async def test_set_creates_a_missing_file_in_flagd_shape(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "flags.json"
    backend = FlagdFileBackend(path)

    await backend.set("fraud-fallback", True)
    await backend.set("fraud-threshold", 0.8)

    document = read_json(path)
    assert_flagd_shape(document)
    assert document["flags"]["fraud-fallback"] == {
        "state": "ENABLED",
        "variants": {"on": True, "off": False},
        "defaultVariant": "on",
    }
    assert document["flags"]["fraud-threshold"]["variants"] == {"0.8": 0.8}
    assert await backend.get("fraud-threshold") == 0.8
    assert await backend.get("no-such-flag") is None


async def test_setting_the_value_a_flag_holds_does_not_rewrite_the_file(flags_file: Path) -> None:
    backend = FlagdFileBackend(flags_file)
    await backend.set("checkout-ml", False)
    before = os.stat(flags_file)

    await backend.set("checkout-ml", False)

    after = os.stat(flags_file)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_a_service_variant_with_the_same_name_but_another_value_is_not_redefined(
    tmp_path: Path,
) -> None:
    path = tmp_path / "flags.json"
    path.write_text(
        json.dumps(
            {
                "flags": {
                    "mode": {
                        "state": "ENABLED",
                        "variants": {"rules": "legacy-rules", "ml": "ml"},
                        "defaultVariant": "ml",
                    }
                }
            }
        )
    )
    backend = FlagdFileBackend(path)

    await backend.set("mode", "rules")

    flag = read_json(path)["flags"]["mode"]
    assert flag["variants"]["rules"] == "legacy-rules"
    assert flag["variants"][flag["defaultVariant"]] == "rules"


async def test_reader_never_observes_a_partial_file(flags_file: Path) -> None:
    backend = FlagdFileBackend(flags_file)
    stop = threading.Event()
    reads: list[int] = []
    broken: list[str] = []

    def read_constantly() -> None:
        while not stop.is_set():
            text = flags_file.read_text()
            try:
                document = json.loads(text)
                assert "checkout-ml" in document["flags"]
            except (ValueError, KeyError, AssertionError):
                broken.append(text)
            reads.append(1)

    reader = threading.Thread(target=read_constantly)
    reader.start()
    try:
        for i in range(200):
            await backend.set("checkout-ml", i % 2 == 0)
            await backend.set("fraud-mode", f"mode-{i % 7}")
    finally:
        stop.set()
        reader.join(timeout=10)
    assert not broken
    assert len(reads) > 100  # the reader really raced the writer


async def test_corrupt_file_is_left_alone_and_reported_as_not_retriable(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text('{"flags": {"checkout-ml": ')
    backend = FlagdFileBackend(path)

    with pytest.raises(FlagBackendError) as caught:
        await backend.set("checkout-ml", False)

    assert caught.value.retriable is False
    assert str(path) in str(caught.value)
    assert path.read_text() == '{"flags": {"checkout-ml": '


async def test_a_value_of_another_type_than_the_flags_variants_is_refused(
    flags_file: Path,
) -> None:
    backend = FlagdFileBackend(flags_file)

    with pytest.raises(FlagBackendError, match="boolean variants") as caught:
        await backend.set("checkout-ml", "rules")

    assert caught.value.retriable is False
    assert read_json(flags_file) == SERVICE_FLAGS
