"""The header's drop target for PNGs: one made here (by any tab), by AUTOMATIC1111 or by ComfyUI sets the settings
of the tab that made it (or that makes its like here), its input images and LoRAs, and opens that tab."""

from typing import Any

import gradio as gr

from studio.pnginfo import TAB_NAMES, Recipe, read_png
from tabs import StudioContext, user_errors
from tabs.loras import LoraBar


class RestoreBar:
    def __init__(self, ctx: StudioContext, loras: LoraBar):
        self.ctx, self.loras = ctx, loras
        with gr.Accordion("Restore from a PNG: the studio's, AUTOMATIC1111's or ComfyUI's", open=False):
            with gr.Row(equal_height=False):
                self.file = gr.File(label="Drop a PNG", file_types=[".png"], elem_id="restore-file", height=120)
                with gr.Column():
                    self.summary = gr.Markdown("A PNG made by any tab here carries its settings and input images; "
                                               "one from A1111 or ComfyUI its prompt, seed, steps, CFG, sampler and "
                                               "size. Drop one to pick up where it left off.",
                                               elem_id="restore-summary")
                    self.found = gr.JSON(label="What the file holds", open=False, elem_id="restore-found")
        self.recipe = gr.State(None)

    def wire(self, tabs: gr.Tabs) -> None:
        """After every tab is built: the settings go to the components of the tab that restores them."""
        self.tabs = tabs
        read = self.file.upload(self.read, self.file, [self.recipe, self.summary, self.found], api_name="restore",
                                queue=False)
        forms = [c for form in self.ctx.restorable.values() for c in form.components]
        slots = [c for slot in self.loras.slots for c in slot]
        read.success(self.apply, self.recipe, [*dict.fromkeys(forms), *slots, self.loras.active, tabs],
                     api_name=False, queue=False)

    @user_errors
    def read(self, path: str | None, request: gr.Request) -> tuple[Recipe, str, dict]:
        if path is None:
            raise ValueError("Drop a PNG here.")
        recipe = read_png(path)
        if recipe.tab not in self.ctx.restorable:
            raise ValueError(f"{recipe.source} made this in {TAB_NAMES.get(recipe.tab, recipe.tab)}, which this "
                             "studio does not have.")
        if recipe.model and recipe.model != self.ctx.model:
            recipe.notes.append(f"Made with {recipe.model}; this studio runs {self.ctx.model}, so the same settings "
                                "draw another picture.")
        elif recipe.model_hash and recipe.model_hash != self.ctx.manager.model_hash(self.ctx.model):
            recipe.notes.append(f"Made with weights of hash {recipe.model_hash}, not the ones loaded here.")
        known = set(self.ctx.lora_names(request))
        if missing := [f"{lora['name']} × {lora['weight']:g}" for lora in recipe.loras if lora["name"] not in known]:
            recipe.notes.append(f"LoRAs it names that are not in your library: {', '.join(missing)} (add them under "
                                "LoRAs and embeddings, then drop the PNG again).")
        lines = [f"**{TAB_NAMES[recipe.tab]}** settings from a PNG made by {recipe.source}: restored in that tab."]
        lines += [f"- {note}" for note in recipe.notes]
        return recipe, "\n".join(lines), recipe.summary()

    def apply(self, recipe: Recipe | None, request: gr.Request) -> dict[Any, Any]:
        if recipe is None:
            return {}
        updates = self.ctx.restore(request, recipe, self.ctx.restorable[recipe.tab])
        # The LoRAs it names that this owner has, in the header's slots (the header applies them as if picked).
        known = set(self.ctx.lora_names(request))
        found = [lora for lora in recipe.loras if lora["name"] in known][:len(self.loras.slots)]
        if recipe.loras:
            empty = [(None, 1.0)] * (len(self.loras.slots) - len(found))
            picked = [(lora["name"], lora["weight"]) for lora in found] + empty
            for (name, scale), (value, weight) in zip(self.loras.slots, picked):
                updates[name], updates[scale] = value, weight if value else gr.skip()
            # Applied through the header's own path, as if picked by hand (those missing are named in the summary).
            updates[self.loras.active] = self.loras.pick(*(v for slot in picked for v in slot), request)
        return {**updates, self.tabs: gr.Tabs(selected=recipe.tab)}
