"""Image inputs that hand the handler the uploaded file, undecoded, so `studio.images.load_image` is the one place
that opens it: any mode PIL reads, and a clear message naming the file for anything else. (Gradio's own Image and
ImageEditor open every upload before the handler runs, and a text file named .png, a truncated PNG or a
decompression bomb then ends in a bare "Error".)

Both are drawn by Gradio's own front end (`is_template`), so they look and behave as gr.Image and gr.ImageEditor.
"""

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components.image_editor import EditorDataBlobs
from gradio.data_classes import FileData


def _path(file: FileData | bytes | None) -> str | None:
    """A file the browser sent: its path, or for the raw bytes of the editor's canvas, a temporary file of them."""
    if file is None:
        return None
    if isinstance(file, FileData):
        return file.path
    with tempfile.NamedTemporaryFile(suffix=".png", delete=False, dir=gr.utils.get_upload_folder()) as out:
        out.write(file)
    return out.name


class ImageInput(gr.Image):
    """gr.Image whose value, as an input, is the uploaded file's path (never opened here)."""

    is_template = True

    def preprocess(self, payload: Any) -> str | None:
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):  # an API client's inline image
            return super().preprocess(payload)
        return str(Path(payload.path)) if payload.path else None


class EditorInput(gr.ImageEditor):
    """gr.ImageEditor whose value, as an input, is {"background", "layers", "composite"} as file paths."""

    is_template = True

    def preprocess(self, payload: Any) -> dict | None:
        if payload is None:
            return None
        data = payload
        if payload.id is not None:
            cached = self.blob_storage.pop(payload.id, None)
            data = (EditorDataBlobs(background=cached.background, layers=cached.layers, composite=cached.composite)
                    if cached else None)
        if data is None:
            return None
        layers = [p for p in (_path(layer) for layer in data.layers or []) if p]
        return {"background": _path(data.background), "layers": layers, "composite": _path(data.composite)}
