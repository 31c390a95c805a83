"""The Segment widget's "Server..." device: a `medseg serve` URL and token, remembered in a 0600 file in
MEDSEG_HOME (or the OS keyring where the keyring package is installed), and the remote sessions its prompts
and automatic runs use (through `napari_medseg.server.client`, which imports no torch)."""
from __future__ import annotations

import json
import weakref
from pathlib import Path

from qtpy.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLineEdit

SERVER_ITEM = "Server..."
PREFIX = "server: "
KEYRING_SERVICE = "napari-medseg-server"


def settings_path() -> Path:
    from ...models.weights import medseg_home

    return medseg_home() / "server" / "client.json"


def _keyring():
    try:
        import keyring
    except ImportError:
        return None
    return keyring


def load_settings() -> dict | None:
    """The remembered {"url", "token"}, or None."""
    try:
        settings = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(settings, dict) or not settings.get("url"):
        return None
    if not settings.get("token") and _keyring() is not None:
        settings["token"] = _keyring().get_password(KEYRING_SERVICE, settings["url"])
    return settings if settings.get("token") else None


def save_settings(url: str, token: str) -> Path:
    """Remember the server: the token in the keyring where installed, else in the 0600 settings file."""
    from ...atomic import atomic_write_json

    path = settings_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    keyring = _keyring()
    stored = {"url": url}
    if keyring is not None:
        try:
            keyring.set_password(KEYRING_SERVICE, url, token)
        except Exception:  # noqa: BLE001 - no usable keyring backend: the 0600 file keeps it
            stored["token"] = token
    else:
        stored["token"] = token
    return atomic_write_json(path, stored, mode=0o600)


def is_remote(device: str) -> bool:
    return device.startswith(PREFIX)


class ServerDialog(QDialog):
    def __init__(self, parent=None, url: str = "", token: str = ""):
        super().__init__(parent)
        self.setWindowTitle("medseg server")
        self.url_edit = QLineEdit(url or "http://127.0.0.1:8765")
        self.token_edit = QLineEdit(token)
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        self.token_edit.setToolTip("The token that 'medseg serve' printed the location of (MEDSEG_HOME/server/token)")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("URL", self.url_edit)
        form.addRow("Token", self.token_edit)
        form.addRow(buttons)


class ServerPicker:
    """Adds "Server..." to a device combo box; owns the client and one remote session per image."""

    def __init__(self, combo, notify):
        self.combo, self._notify = combo, notify
        self.client = None
        self._sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # image layer -> (key, session)
        self._previous = combo.currentText()
        combo.addItem(SERVER_ITEM)
        settings = load_settings()
        if settings:
            self._add_entry(settings["url"])
            self._settings = settings
        else:
            self._settings = None
        combo.textActivated.connect(self._activated)

    def local_index(self) -> int:
        """Where a newly found local device goes: before the server entries."""
        index = self.combo.findText(SERVER_ITEM)
        return index if index >= 0 else self.combo.count()

    def _add_entry(self, url: str) -> str:
        text = PREFIX + url
        if self.combo.findText(text) < 0:
            self.combo.insertItem(self.combo.findText(SERVER_ITEM), text)
        return text

    def _activated(self, text: str) -> None:
        if text != SERVER_ITEM:
            self._previous = text
            return
        settings = self._settings or {}
        dialog = ServerDialog(self.combo, settings.get("url", ""), settings.get("token", ""))
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.connect_to(dialog.url_edit.text().strip(), dialog.token_edit.text().strip())
        else:
            self.combo.setCurrentText(self._previous)

    def connect_to(self, url: str, token: str) -> bool:
        """Check the server (URL and token) now, remember it and select it; False (and a notice) if it fails."""
        from ...errors import MedsegError
        from ...server.client import Client

        try:
            client = Client(url, token=token)
            status = client.connect()
        except MedsegError as exc:
            self._notify("error", str(exc))
            self.combo.setCurrentText(self._previous)
            return False
        if self.client is not None:
            self.client.close()
        self.client, self._settings = client, {"url": client.url, "token": token}
        self._sessions = weakref.WeakKeyDictionary()
        save_settings(client.url, token)
        text = self._add_entry(client.url)
        self.combo.setCurrentText(text)
        self._previous = text
        self._notify("info", f"Connected to {client.url} ({', '.join(status['devices'])})")
        return True

    def _client(self, device: str):
        from ...errors import MedsegError
        from ...server.client import Client

        url = device[len(PREFIX):]
        if self.client is None or self.client.url != url:
            settings = self._settings or {}
            if settings.get("url") != url:
                raise MedsegError(f"No token for {url}: choose Server... and enter it")
            self.client = Client(url, token=settings["token"])
            self.client.connect()
        return self.client

    def session(self, device: str, layer, image, key):
        """The remote session of ``layer``'s image (``key`` tells when its content changed: opened anew)."""
        client = self._client(device)
        known = self._sessions.get(layer)
        if known is not None and known[0] == key and known[1].client is client:
            return known[1]
        if known is not None:
            known[1].close()
        session = client.open(image)
        self._sessions[layer] = (key, session)
        return session

    def plane_mask(self, device: str, layer, image, card_id: str, precision: str, axis, index, limits, box, points,
                   point_labels):
        """The boolean mask of the prompts on the displayed plane, computed by the server."""
        import numpy as np

        session = self.session(device, layer, image, (id(layer.data), image.array.shape))
        shape = image.spatial_shape if axis is None else tuple(s for a, s in enumerate(image.spatial_shape) if a != axis)
        mask = np.zeros(shape, bool)
        found = session.box(box, index=index, axis=axis, points=points or None,
                            point_labels=point_labels or None, model=card_id, precision=precision,
                            window=limits, write=False)
        if found is None:
            return mask
        offset, region = found
        if axis is not None:
            offset, region = offset[:axis] + offset[axis + 1:], np.take(region, 0, axis=axis)
        mask[tuple(slice(o, o + s) for o, s in zip(offset, region.shape))] = region > 0
        return mask

    def segment(self, device: str, image, card_id: str, progress=None, cancel=None, **kwargs):
        """`segment()` on the server for this image (uploaded for this run): labels and the model's classes."""
        with self._client(device).open(image) as session:
            labels = session.segment(card_id, progress=progress, cancel=cancel, **kwargs)
        return labels, session.classes or None
