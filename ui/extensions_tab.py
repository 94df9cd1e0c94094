"""The Extensions tab: what was found at start-up and why not loaded, enabling and disabling (Apply and
restart), updating and removing, the index of available extensions, and installing from a URL.

Thin handlers: the work is backend/extensions/installer.py's and index.py's. Installs, updates, removals
and pip are refused there while the studio is reachable by others (extension_access_refusal).
"""
from __future__ import annotations

import html
import secrets
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from backend.app_context import BUILTIN_EXTENSIONS, AppContext
from backend.extensions import API_VERSION
from backend.extensions.git_urls import InstallRefused
from backend.extensions.index import (
    ExtensionIndex,
    IndexEntry,
    IndexReadError,
    index_source,
    is_installed,
    load_index,
    search,
)
from backend.extensions.installer import (
    ExtensionInstaller,
    check_requirements,
    disabled_after,
    git_info,
    restart_when_idle,
)
from backend.extensions.manifest import MANIFEST, ManifestError, read_manifest

COLUMNS = ["Extension", "Version", "Status", "Why not loaded", "Load time (s)", "URL", "Commit", "Folder"]
INDEX_COLUMNS = ["Name", "Description", "Tags", "Added", "URL", "Installed"]
INSTALLED_NEW = "installed: loads after a restart"
REMOVED = "removed: gone after a restart"

# After "Apply and restart": poll the page's config until a new process serves it (its boot id differs), then
# reload, so the page shows the restarted studio. A1111's restart_reload() does the same with a ping.
RELOAD_JS = """(restarting, boot) => {
  if (restarting !== "yes") return;
  const poll = async () => {
    try {
      const answer = await fetch("./config", {cache: "no-store"});
      if (answer.ok && !(await answer.text()).includes(boot)) { location.reload(); return; }
    } catch (error) { /* the old process has stopped; the new one is not serving yet */ }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}"""


def make_installer(ctx: AppContext) -> ExtensionInstaller:
    """Installs go to <data dir>/extensions; the shipped folder's own extensions may only be disabled."""
    return ExtensionInstaller(ctx.root / "extensions", builtin=BUILTIN_EXTENSIONS, flags=ctx.command_flags)


# --- the Installed list -------------------------------------------------------------------------------

def _new_folders(ctx: AppContext, known: set[Path]) -> list[Path]:
    """Extension folders installed since the start (not among the records yet)."""
    root = ctx.root / "extensions"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
                  and (p / MANIFEST).is_file() and p.resolve() not in known)


def extension_rows(ctx: AppContext) -> list[list]:
    """One row per extension: title, version, status, why not loaded, load time, URL, commit, folder."""
    records = ctx.extensions.records if ctx.extensions else []
    rows = []
    for r in records:
        status = r.status if r.folder.is_dir() else REMOVED
        info = git_info(r.folder)
        rows.append([r.manifest.title if r.manifest else r.folder.name, r.manifest.version if r.manifest else "",
                     status, r.error, round(r.seconds, 2), info.remote or (r.manifest.url if r.manifest else ""),
                     (info.commit_hash or "")[:8], str(r.folder)])
    for folder in _new_folders(ctx, {r.folder.resolve() for r in records}):
        try:
            manifest = read_manifest(folder)
        except ManifestError as exc:
            rows.append([folder.name, "", INSTALLED_NEW, str(exc), 0.0, "", "", str(folder)])
            continue
        info = git_info(folder)
        rows.append([manifest.title, manifest.version, INSTALLED_NEW, "", 0.0, info.remote or manifest.url,
                     (info.commit_hash or "")[:8], str(folder)])
    return rows


def _known_ids(ctx: AppContext) -> dict[str, str]:
    """id -> folder name of every extension with a manifest: those can be enabled or disabled."""
    records = ctx.extensions.records if ctx.extensions else []
    known = {r.manifest.id: r.folder.name for r in records if r.manifest}
    for folder in _new_folders(ctx, {r.folder.resolve() for r in records}):
        try:
            known.setdefault(read_manifest(folder).id, folder.name)
        except ManifestError:
            continue
    return known


def _saved_disabled(ctx: AppContext) -> tuple[list[str], bool]:
    kept = ctx.options.extra_options
    return list(kept.get("disabled_extensions") or []), kept.get("disable_all_extensions", "none") != "none"


def enabled_choices(ctx: AppContext) -> tuple[list[tuple[str, str]], list[str]]:
    """(label, id) for the checkboxes, and the ids config.json leaves enabled."""
    records = {r.manifest.id: r for r in (ctx.extensions.records if ctx.extensions else []) if r.manifest}
    disabled, _ = _saved_disabled(ctx)
    choices, enabled = [], []
    for ext_id, folder in _known_ids(ctx).items():
        record = records.get(ext_id)
        choices.append((record.manifest.title if record else f"{ext_id} (new)", ext_id))
        if ext_id not in disabled and folder not in disabled:
            enabled.append(ext_id)
    return choices, enabled


def folder_choices(ctx: AppContext, installer: ExtensionInstaller) -> list[tuple[str, str]]:
    """The folders Update and Remove may act on: the user's own, not the shipped ones."""
    folders = [Path(row[-1]) for row in extension_rows(ctx)]
    return [(f.name, str(f)) for f in dict.fromkeys(folders) if installer.removable(f) is None]


# --- handlers -----------------------------------------------------------------------------------------

def apply_and_restart(ctx: AppContext, installer: ExtensionInstaller, enabled: list[str],
                      disable_all: bool) -> tuple[str, str]:
    """Save disabled_extensions (A1111's key) and restart once the device is idle; (message, "yes" if so)."""
    if (why := installer.refusal) is not None:
        return why, ""
    current, _ = _saved_disabled(ctx)
    disabled = disabled_after(_known_ids(ctx), enabled or [], current)
    try:
        ctx.options.update_extra({"disabled_extensions": disabled,
                                  "disable_all_extensions": "all" if disable_all else "none"})
    except ValueError as exc:
        return f"Not saved: {exc}", ""
    saved = f"Saved: {', '.join(disabled) or 'no extension'} disabled{' (all are, by the switch)' if disable_all else ''}."
    if ctx.server_control is None:
        return f"{saved} Restarting is not available here: restart the studio yourself to apply it.", ""
    restart_when_idle(ctx.server_control, ctx.service.queue)
    return f"{saved} The studio restarts once no job is running or waiting; this page reloads by itself.", "yes"


def _code(text: str) -> str:
    """A markdown code span (entities are not decoded there, so no html.escape; Gradio sanitizes)."""
    return "`" + text.replace("`", "'") + "`"


def _commit_lines(commits: list[str]) -> str:
    return "".join(f"\n- {_code(c)}" for c in commits)


def update_folder(installer: ExtensionInstaller, folder: str | None) -> str:
    if not folder:
        return "Choose an extension first."
    try:
        result = installer.update(Path(folder))
    except InstallRefused as exc:
        return f"Not updated: {html.escape(str(exc))}"
    return html.escape(result.message) + _commit_lines(result.commits)


def remove_folder(installer: ExtensionInstaller, folder: str | None, sure: bool) -> str:
    if not folder:
        return "Choose an extension first."
    if not sure:
        return "Tick \"Yes, delete its folder\" first: removing deletes the folder and everything in it."
    try:
        return html.escape(installer.remove(Path(folder)))
    except (InstallRefused, OSError) as exc:
        return f"Not removed: {html.escape(str(exc))}"


@dataclass
class Pending:
    """What an install left to confirm: its requirements, already checked."""
    requirements: list[str]


def install_from(installer: ExtensionInstaller, url: str, branch: str = "",
                 folder: str = "") -> tuple[str, str, Pending | None]:
    """(message, requirements as markdown, what Confirm installs or None)."""
    try:
        result = installer.install(url, branch, folder)
    except InstallRefused as exc:
        return f"Not installed: {html.escape(str(exc))}", "", None
    message = html.escape(result.message)
    if not result.requirements:
        return message, "It has no pip requirements.", None
    listed = "".join(f"\n- {_code(r)}" for r in result.requirements)
    if result.requirement_problems:
        return message, (f"Its requirements, which will not be installed: "
                         f"{html.escape(result.requirement_problems)}{listed}"), None
    return message, (f"It needs these packages in the studio's Python environment:{listed}\n\n"
                     "Press **Install requirements** to run pip for them (the log shows below)."), \
        Pending(check_requirements(result.requirements))


def run_pip(installer: ExtensionInstaller, pending: Pending | None):
    """Stream pip's log into the page as it runs."""
    if pending is None:
        yield "Nothing is waiting for confirmation: install an extension first."
        return
    lines: list[str] = []
    try:
        for line in installer.pip_install(pending.requirements):
            lines.append(line)
            yield "\n".join(lines)
    except InstallRefused as exc:
        lines.append(f"Refused: {exc}")
        yield "\n".join(lines)


# --- the index ----------------------------------------------------------------------------------------

def _installed_entries(ctx: AppContext, index: ExtensionIndex) -> list[IndexEntry]:
    rows = extension_rows(ctx)
    remotes = [row[5] for row in rows if row[2] != REMOVED]
    names = [Path(row[-1]).name for row in rows if row[2] != REMOVED]
    return [e for e in index.entries if is_installed(e, remotes, names)]


def index_rows(ctx: AppContext, index: ExtensionIndex | None, text: str = "", tags: list[str] | None = None,
               hide_installed: bool = False) -> list[list[str]]:
    if index is None:
        return []
    installed = _installed_entries(ctx, index)
    found = search(index.entries, text, tags or [], hide_installed, installed)
    return [[e.name, e.description, ", ".join(e.tags), e.added, e.url, "yes" if e in installed else ""]
            for e in found]


def load_index_for_page(source: str) -> tuple[ExtensionIndex | None, str]:
    try:
        index = load_index(source)
    except IndexReadError as exc:
        return None, html.escape(str(exc))
    skipped = f" ({index.skipped} without a name or URL skipped)" if index.skipped else ""
    return index, f"{len(index.entries)} extension(s) in {html.escape(index.source)}{skipped}."


# --- layout -------------------------------------------------------------------------------------------

def _installed_panel(ctx: AppContext, installer: ExtensionInstaller, boot: gr.Textbox) -> dict:
    choices, enabled = enabled_choices(ctx)
    _, disable_all = _saved_disabled(ctx)
    table = gr.Dataframe(value=extension_rows(ctx), headers=COLUMNS, interactive=False, wrap=True,
                         elem_id="extensions_installed")
    enabled_box = gr.CheckboxGroup(choices=choices, value=enabled, label="Enabled (applies after a restart)",
                                   elem_id="extensions_enabled")
    with gr.Row():
        all_off = gr.Checkbox(value=disable_all, label="Disable all extensions", elem_id="extensions_disable_all")
        apply = gr.Button("Apply and restart", variant="primary", elem_id="extensions_apply")
        refresh = gr.Button("Refresh list", elem_id="extensions_refresh")
    restarting = gr.Textbox(visible=False)
    apply_result = gr.Markdown(elem_id="extensions_apply_result")
    with gr.Row():
        folder = gr.Dropdown(choices=folder_choices(ctx, installer), label="Installed extension",
                             elem_id="extensions_folder", scale=3)
        update = gr.Button("Update", elem_id="extensions_update", scale=1)
        sure = gr.Checkbox(label="Yes, delete its folder", elem_id="extensions_remove_sure", scale=1)
        remove = gr.Button("Remove", variant="stop", elem_id="extensions_remove", scale=1)
    folder_result = gr.Markdown(elem_id="extensions_folder_result")

    apply.click(lambda on, off: apply_and_restart(ctx, installer, on, off), inputs=[enabled_box, all_off],
                outputs=[apply_result, restarting]).then(None, inputs=[restarting, boot], js=RELOAD_JS)
    updated = update.click(lambda f: update_folder(installer, f), inputs=folder, outputs=folder_result)
    removed = remove.click(lambda f, s: remove_folder(installer, f, s), inputs=[folder, sure], outputs=folder_result)
    return {"table": table, "enabled": enabled_box, "folder": folder, "refresh": refresh, "updated": updated,
            "removed": removed}


def _refresh_outputs(ctx: AppContext, installer: ExtensionInstaller):
    choices, enabled = enabled_choices(ctx)
    return (extension_rows(ctx), gr.update(choices=choices, value=enabled),
            gr.update(choices=folder_choices(ctx, installer), value=None))


def index_to_load(ctx: AppContext, typed: str | None, shown: str | None) -> tuple[str, bool]:
    """(what Load index reads, whether that is the setting): the box's text if typed over, else the setting as
    it is now (it may have changed in Settings or through the API since the page filled the box)."""
    typed = (typed or "").strip()
    if typed and typed != shown:
        return typed, False
    return index_source(ctx.options), True


def _index_panel(ctx: AppContext) -> dict:
    current = lambda: index_source(ctx.options)  # noqa: E731 - read on each page load, not once at start
    with gr.Row():
        source = gr.Textbox(value=current, label="Index (a file or an http(s) URL)", scale=4,
                            info="Settings → Extension index URL (extensions_index_url) sets the default.",
                            elem_id="extensions_index_source")
        load = gr.Button("Load index", elem_id="extensions_index_load", scale=1)
    shown = gr.State(current)  # what the box was given, to tell a typed source from the setting
    note = gr.Markdown(elem_id="extensions_index_note")
    with gr.Row():
        text = gr.Textbox(label="Search", elem_id="extensions_index_search", scale=3)
        hide = gr.Checkbox(label="Hide installed", elem_id="extensions_index_hide_installed", scale=1)
    tags = gr.CheckboxGroup(choices=[], label="Only with these tags", elem_id="extensions_index_tags")
    table = gr.Dataframe(headers=INDEX_COLUMNS, interactive=False, wrap=True, elem_id="extensions_index",
                         column_widths=["16%", "40%", "12%", "9%", "17%", "6%"])
    with gr.Row():
        pick = gr.Dropdown(choices=[], label="Extension to install", elem_id="extensions_index_pick", scale=4)
        install = gr.Button("Install", variant="primary", elem_id="extensions_index_install", scale=1)
    state = gr.State(None)

    def listed(index, words, chosen, hide_installed):
        rows = index_rows(ctx, index, words, chosen, hide_installed)
        picks = [(row[0], row[4]) for row in rows if not row[5]]
        return rows, gr.update(choices=picks, value=None)

    def loaded(typed, given, words, hide_installed):
        where, from_setting = index_to_load(ctx, typed, given)
        index, message = load_index_for_page(where)
        tag_choices = [(f"{t}: {d}" if d else t, t) for t, d in (index.tags.items() if index else [])]
        # Read from the setting: the box shows it now, and goes on following it until typed over.
        box = (where, where) if from_setting else (gr.update(), given)
        return (*box, index, message, gr.update(choices=tag_choices, value=[]),
                *listed(index, words, [], hide_installed))

    load.click(loaded, inputs=[source, shown, text, hide], outputs=[source, shown, state, note, tags, table, pick])
    for widget in (text, tags, hide):
        widget.change(listed, inputs=[state, text, tags, hide], outputs=[table, pick])
    return {"pick": pick, "install": install, "refilter": (listed, [state, text, tags, hide], [table, pick])}


def build_extensions_tab(ctx: AppContext) -> None:
    installer = make_installer(ctx)
    gr.Markdown(f"**An extension runs with your own rights on this machine**: it can read and change your files "
                f"and reach the network. Install only code you trust. Plugin API {API_VERSION}; installs go to "
                f"`{installer.root}`.", elem_id="extensions_warning")
    if installer.refusal:
        gr.Markdown(f"⚠ {html.escape(installer.refusal)}", elem_id="extensions_refusal")
    # A new value per process: the page notices a restart when the served config stops holding it.
    boot = gr.Textbox(value=secrets.token_hex(8), visible=False, elem_id="extensions_boot_id")
    pending = gr.State(None)
    with gr.Tabs(elem_id="extensions_tabs"):
        with gr.Tab("Installed", id="extensions_installed_tab"):
            installed = _installed_panel(ctx, installer, boot)
        with gr.Tab("Available", id="extensions_available_tab"):
            available = _index_panel(ctx)
        with gr.Tab("Install from URL", id="extensions_url_tab"):
            url = gr.Textbox(label="URL of the extension's git repository", elem_id="extensions_url",
                             placeholder="https://github.com/owner/repo or git@github.com:owner/repo")
            with gr.Row():
                branch = gr.Textbox(label="Branch or tag (empty: the default)", elem_id="extensions_branch")
                folder = gr.Textbox(label="Folder name (empty: the repository's)", elem_id="extensions_folder_name")
            install = gr.Button("Install", variant="primary", elem_id="extensions_install")
    result = gr.Markdown(elem_id="extensions_install_result")
    with gr.Group():
        requirements = gr.Markdown("The pip requirements of an extension show here once it is installed; nothing "
                                   "runs pip until you press the button.", elem_id="extensions_requirements")
        confirm = gr.Button("Install requirements", interactive=False, elem_id="extensions_requirements_confirm")
        pip_log = gr.Textbox(label="pip log", lines=6, max_lines=30, interactive=False, elem_id="extensions_pip_log")

    listed = [installed["table"], installed["enabled"], installed["folder"]]
    shown, refilter_inputs, refilter_outputs = available["refilter"]
    refresh = lambda: _refresh_outputs(ctx, installer)  # noqa: E731 - shared by every change to the folders
    installed["refresh"].click(refresh, outputs=listed)
    def installed_from(*args):
        message, needs, waiting = install_from(installer, *args)
        return message, needs, waiting, gr.update(interactive=waiting is not None), ""

    after_install = [result, requirements, pending, confirm, pip_log]
    install.click(installed_from, inputs=[url, branch, folder], outputs=after_install).then(refresh, outputs=listed)
    available["install"].click(lambda u: installed_from(u or ""), inputs=available["pick"],
                               outputs=after_install).then(
        refresh, outputs=listed).then(shown, inputs=refilter_inputs, outputs=refilter_outputs)
    confirm.click(lambda p: run_pip(installer, p), inputs=pending, outputs=pip_log)
    installed["updated"].then(refresh, outputs=listed)
    installed["removed"].then(refresh, outputs=listed)
