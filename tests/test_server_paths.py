"""`interpsuite.server.paths`: user-given artifact paths and export names stay inside their folders."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from interpsuite.server.errors import ApiError  # noqa: E402
from interpsuite.server.paths import export_target, resolve_artifact  # noqa: E402
from interpsuite.server.settings import ServerSettings  # noqa: E402


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    for name in ("runs", "artifacts", "more", "exports"):
        (tmp_path / name).mkdir()
    return ServerSettings(
        model="tiny_llama",
        runs_dir=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        artifact_dirs=(tmp_path / "artifacts", tmp_path / "more"),
        exports_dir=tmp_path / "exports",
    )


def status(call) -> tuple[int, str]:
    with pytest.raises(ApiError) as info:
        call()
    return info.value.status, info.value.message


@pytest.mark.parametrize("path", ["/etc/passwd", "C:/x", "C:\\x", "\\\\server\\share"])
def test_absolute_paths_are_400(settings, path):
    code, message = status(lambda: resolve_artifact(settings, path, "predictor"))
    assert code == 400
    assert message.startswith("predictor:")


@pytest.mark.parametrize("path", ["../secret", "run/../../x", "run\\..\\..\\x"])
def test_dotdot_is_400(settings, path):
    code, message = status(lambda: resolve_artifact(settings, path, "predictor"))
    assert (code, "'..'" in message) == (400, True)


@pytest.mark.parametrize("path", ["", "   ", ".", "a\x00b"])
def test_empty_dot_and_nul_are_400(settings, path):
    assert status(lambda: resolve_artifact(settings, path, "detector"))[0] == 400


def test_found_in_runs_dir_before_artifact_dirs(settings):
    for root in (settings.runs_dir, *settings.artifact_dirs):
        (root / "run1" / "predictor").mkdir(parents=True)
    found = resolve_artifact(settings, "run1/predictor", "predictor")
    assert found == (settings.runs_dir / "run1" / "predictor").resolve()


def test_found_in_an_artifact_dir_in_order(settings):
    first, second = settings.artifact_dirs
    (second / "det").mkdir()
    assert resolve_artifact(settings, "det", "detector") == (second / "det").resolve()
    (first / "det").mkdir()
    assert resolve_artifact(settings, "./det/", "detector") == (first / "det").resolve()
    (first / "file.json").write_text("{}")
    assert resolve_artifact(settings, "file.json", "patch") == (first / "file.json").resolve()


def test_not_found_is_404_naming_the_roots(settings):
    code, message = status(lambda: resolve_artifact(settings, "nothing/here", "predictor"))
    assert code == 404
    assert "'nothing/here'" in message and "2 artifact directories" in message


def test_symlink_out_is_404(settings, tmp_path):
    outside = tmp_path / "outside"
    (outside / "predictor").mkdir(parents=True)
    (settings.runs_dir / "escape").symlink_to(outside, target_is_directory=True)
    assert status(lambda: resolve_artifact(settings, "escape/predictor", "predictor"))[0] == 404


def test_symlink_inside_is_followed(settings):
    (settings.runs_dir / "real").mkdir()
    (settings.runs_dir / "alias").symlink_to(settings.runs_dir / "real", target_is_directory=True)
    assert resolve_artifact(settings, "alias", "x") == (settings.runs_dir / "real").resolve()


def test_export_target_is_a_fresh_folder_under_exports(settings, tmp_path):
    settings.exports_dir = tmp_path / "new" / "exports"  # created on demand
    target = export_target(settings, "pruned-0.2_v1", "export")
    assert target == (tmp_path / "new" / "exports").resolve() / "pruned-0.2_v1"
    assert target.parent.is_dir() and not target.exists()


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "../x", "a..b", "/abs", ".hidden", "a\x00", "a\\b", "x" * 200])
def test_export_names_other_than_one_plain_folder_are_400(settings, name):
    code, message = status(lambda: export_target(settings, name, "export"))
    assert code == 400 and message.startswith("export:")


def test_existing_export_is_409_unless_overwrite(settings):
    (settings.exports_dir / "done").mkdir()
    code, message = status(lambda: export_target(settings, "done", "export"))
    assert code == 409 and "overwrite" in message
    assert export_target(settings, "done", "export", overwrite=True) == settings.exports_dir.resolve() / "done"


def test_export_name_that_is_a_symlink_is_refused(settings, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (settings.exports_dir / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert status(lambda: export_target(settings, "link", "export", overwrite=True))[0] == 400
