"""The header's settings: how often the denoising tabs show a live preview, for this browser session."""

import gradio as gr

from tabs import StudioContext, session

MAX_EVERY = 50


class SettingsBar:
    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        with gr.Accordion("Live preview", open=False):
            self.every = gr.Slider(0, MAX_EVERY, step=1, value=ctx.preview_every, label="Show the image forming "
                                   "every … steps", elem_id="preview-every",
                                   info="The model's current guess of the final picture (its predicted x0), in the "
                                        "result while it denoises. 0 turns previews off (slow machines).")
        self.every.release(self.pick, self.every, None, api_name="preview_every", queue=False)

    def pick(self, every: float, request: gr.Request) -> None:
        self.ctx.previews[session(request)] = max(0, min(MAX_EVERY, int(every)))
