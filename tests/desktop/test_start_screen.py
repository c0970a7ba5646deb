"""The start screen: new, open, rename, duplicate, delete; damaged projects explained."""

from __future__ import annotations

import pytest

from core import paths
from core import project as projects
from desktop.session import Session
from desktop.start_screen import StartScreen


@pytest.fixture
def screen(qtbot, runner):
    session = Session(runner)
    widget = StartScreen(session)
    qtbot.addWidget(widget)
    return widget


def test_new_project_asks_a_name_and_emits_its_folder(qtbot, screen, scripted_dialogs):
    scripted_dialogs.answer("ask_text", "Quantize SmolLM")
    with qtbot.waitSignal(screen.projectChosen) as blocker:
        screen.new_button.click()
    folder = blocker.args[0]
    assert projects.load_project(folder).name == "Quantize SmolLM"
    assert screen.project_names() == ["Quantize SmolLM"]


def test_cancelled_name_question_creates_nothing(qtbot, screen, scripted_dialogs):
    scripted_dialogs.answer("ask_text", None)
    with qtbot.assertNotEmitted(screen.projectChosen):
        screen.new_button.click()
    assert screen.project_names() == []


def test_empty_name_is_refused_inline(qtbot, screen, scripted_dialogs):
    scripted_dialogs.answer("ask_text", "   ")
    screen.new_button.click()
    assert not screen.error_panel.isHidden()
    assert "empty" in screen.error_panel.message.text()


def test_rename_duplicate_and_delete(qtbot, screen, scripted_dialogs):
    original = projects.create_project("First")
    screen.refresh()
    assert screen.select(original.folder)

    scripted_dialogs.answer("ask_text", "Renamed")
    screen.rename_button.click()
    assert projects.load_project(original.folder).name == "Renamed"

    screen.select(original.folder)
    screen.duplicate_button.click()
    assert sorted(screen.project_names()) == ["Renamed", "Renamed copy"]

    screen.select(original.folder)
    scripted_dialogs.answer("confirm", False)
    screen.delete_button.click()
    assert original.folder.exists()
    scripted_dialogs.answer("confirm", True)
    screen.delete_button.click()
    assert not original.folder.exists()
    assert screen.project_names() == ["Renamed copy"]


def test_open_selected_emits_the_folder(qtbot, screen):
    project = projects.create_project("Open me")
    screen.refresh()
    screen.select(project.folder)
    with qtbot.waitSignal(screen.projectChosen) as blocker:
        screen.open_button.click()
    assert blocker.args == [project.folder]


def test_open_project_folder_uses_the_folder_dialog(qtbot, screen, scripted_dialogs):
    project = projects.create_project("Elsewhere")
    scripted_dialogs.answer("choose_folder", project.folder)
    with qtbot.waitSignal(screen.projectChosen):
        screen.open_folder_button.click()


def test_damaged_project_is_listed_and_explained_when_opened(qtbot, screen):
    project = projects.create_project("Broken")
    (project.folder / "project.json").write_text("{ not json", encoding="utf-8")
    screen.refresh()
    assert screen.select(project.folder)
    assert not screen.rename_button.isEnabled()
    with qtbot.assertNotEmitted(screen.projectChosen):
        screen.open_button.click()
    message = screen.error_panel.message.text()
    assert "project.json" in message and "damaged" in message
    assert screen.error_panel.fix.text()  # says what to do


def test_folder_without_a_project_is_refused(qtbot, screen, tmp_path):
    with qtbot.assertNotEmitted(screen.projectChosen):
        assert screen.open_folder(tmp_path) is False
    assert "project.json" in screen.error_panel.message.text()


def test_projects_live_in_quanttune_home(screen, quanttune_home):
    project = projects.create_project("Where")
    assert project.folder.parent == paths.projects_dir()
    assert str(quanttune_home) in str(project.folder)
