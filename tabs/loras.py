"""The header's LoRA picker: library LoRAs (from the Train tab) applied, with a scale each, to every tab's jobs."""

import gradio as gr

from studio.lora import LoraUse
from tabs import StudioContext, session, slider, user_errors

SLOTS = 2


class LoraBar:
    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        with gr.Accordion("LoRAs: apply trained LoRAs in every tab", open=False):
            self.slots = []
            with gr.Row():
                for k in range(SLOTS):
                    name = gr.Dropdown([], value=None, label=f"LoRA {k + 1}", elem_id=f"lora-{k + 1}",
                                       allow_custom_value=True,
                                       info="Yours from the Train tab, and shared/… ones published to all")
                    scale = slider(LoraUse, "scale", f"Scale {k + 1}")
                    self.slots.append((name, scale))
            self.active = gr.Markdown("No LoRA applied.", elem_id="lora-active")
        inputs = [c for slot in self.slots for c in slot]
        for name, scale in self.slots:
            name.focus(self.refresh, None, name, api_name=False, queue=False)
            for change in (name.change, scale.release):
                change(self.pick, inputs, self.active, api_name=False, queue=False)
        # One event in the API, for scripts and tests.
        self.apply = gr.Button(visible=False)
        self.apply.click(self.pick, inputs, self.active, api_name="loras_pick", queue=False)

    def refresh(self, request: gr.Request):
        return gr.update(choices=self.ctx.lora_names(request))

    @user_errors
    def pick(self, name1, scale1, name2, scale2, request: gr.Request):
        picked = [(n, LoraUse(n, float(s)).scale) for n, s in ((name1, scale1), (name2, scale2)) if n]
        known = self.ctx.lora_names(request)
        if missing := [n for n, _ in picked if n not in known]:
            raise ValueError(f"No finished LoRA named {', '.join(missing)} in your library.")
        self.ctx.loras[session(request)] = [(self.ctx.lora_path(request, n), s) for n, s in picked]
        if not picked:
            return "No LoRA applied."
        return "Applied in every tab: " + ", ".join(f"**{n}** × {s:g}" for n, s in picked)
