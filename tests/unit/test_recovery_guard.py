"""The start-up guard of the recovery state: refuse a lost directory, name a damaged file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitpin.app.recovery import StartMode, check_partition, decide_start, read_state
from splitpin.errors import StartupError

counts = st.dictionaries(st.sampled_from(["a.decisions", "a.replies", "a.dead"]), st.integers(0, 9))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pristine")
    init_db_dir(directory, 1)
    return directory / "part-0.sqlite3"


@given(earlier=counts, reset=st.booleans())
def test_without_state_only_an_empty_output_or_reset_starts(
    tmp_path_factory: pytest.TempPathFactory, earlier: dict[str, int], reset: bool
) -> None:
    state = read_state(tmp_path_factory.mktemp("none") / "missing")
    ran_before = any(count > 0 for count in earlier.values())
    if ran_before and not reset:
        with pytest.raises(StartupError) as caught:
            decide_start(state, earlier, reset=reset)
        message = str(caught.value)
        assert "--reset" in message and str(state.directory) in message
        assert all(topic in message for topic, count in earlier.items() if count > 0)
    else:
        expected = StartMode.RESET if ran_before else StartMode.FIRST_RUN
        assert decide_start(state, earlier, reset=reset) is expected


def test_an_empty_directory_is_no_state(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="refusing"):
        decide_start(read_state(tmp_path), {"t.decisions": 1}, reset=False)


@given(earlier=counts, reset=st.booleans())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=20)
def test_sound_partitions_resume_whatever_the_topics_hold(
    pristine: Path, earlier: dict[str, int], reset: bool
) -> None:
    assert decide_start(read_state(pristine.parent), earlier, reset=reset) is StartMode.RESUME


@given(data=st.data())
@settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60, deadline=None
)
def test_damage_is_either_harmless_or_named(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Truncations and overwritten bytes never escape as anything but StartupError(file)."""
    target = tmp_path_factory.mktemp("damaged") / "part-0.sqlite3"
    shutil.copy(pristine, target)
    raw = bytearray(target.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="keep")]
    else:
        start = data.draw(st.integers(0, len(raw) - 1), label="at")
        junk = data.draw(st.binary(min_size=1, max_size=512), label="junk")
        raw[start : start + len(junk)] = junk
    target.write_bytes(bytes(raw))
    try:
        check_partition(target)
    except StartupError as exc:
        assert str(target) in str(exc) and "--reset" in str(exc)


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: b"",  # truncated to nothing: opens as an empty database
        lambda raw: raw[:1000],  # torn mid-page
        lambda raw: b"not a database at all" * 100,
        lambda raw: raw[:100] + b"\xff" * 3000 + raw[3100:],  # schema page overwritten
    ],
)
def test_known_damage_is_named(pristine: Path, tmp_path: Path, damage: object) -> None:
    target = tmp_path / "part-0.sqlite3"
    target.write_bytes(damage(pristine.read_bytes()))  # type: ignore[operator]
    with pytest.raises(StartupError) as caught:
        decide_start(read_state(tmp_path), {}, reset=False)
    assert str(target) in str(caught.value)
