"""The header's LoRAs and embeddings: library LoRAs (trained in the Train tab or added here) applied, with a scale
each, to every tab's jobs; LoRAs and textual-inversion embeddings made elsewhere added to the owner's library; the
embeddings this session's jobs load."""

from pathlib import Path

import gradio as gr

from studio.lora import AdapterInfo, LoraUse, embedding_library, import_file, suggest_name
from tabs import GPU, StudioContext, session, slider, user_errors

SLOTS = 2
IMPORT_SECONDS = 10  # a LoRA or embedding checked against the model
FORMATS = {"kohya": "a kohya-ss/A1111 LoRA", "diffusers": "a diffusers LoRA", "peft": "a peft LoRA",
           "a1111-embedding": "an A1111 embedding", "diffusers-embedding": "a diffusers embedding"}


class LoraBar:
    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        with gr.Accordion("LoRAs and embeddings: apply them in every tab", open=False,
                          elem_id="lora-bar") as bar:
            self.slots = []
            with gr.Row():
                for k in range(SLOTS):
                    name = gr.Dropdown([], value=None, label=f"LoRA {k + 1}", elem_id=f"lora-{k + 1}",
                                       allow_custom_value=True,
                                       info="Yours (trained or added), and shared/… ones published to all")
                    scale = slider(LoraUse, "scale", f"Scale {k + 1}")
                    self.slots.append((name, scale))
            self.active = gr.Markdown("No LoRA applied.", elem_id="lora-active")
            self.embeddings = gr.CheckboxGroup([], label="Embeddings", elem_id="embeddings", visible=False,
                                               info="Loaded for your jobs; each acts where its name is in a prompt")
            self.embedded = gr.Markdown(elem_id="embeddings-active")
            with gr.Accordion("Add your own LoRA or embedding", open=False):
                with gr.Row():
                    self.file = gr.File(label="A LoRA (kohya/A1111, diffusers, peft) or a textual-inversion embedding",
                                        file_types=[".safetensors", ".pt", ".ckpt", ".bin"], type="filepath",
                                        elem_id="lora-file")
                    with gr.Column():
                        self.path = gr.Textbox(label="…or a file on this server",
                                               placeholder="/data/loras/watercolor.safetensors", elem_id="lora-path")
                        self.name = gr.Textbox(label="Name", info="Default: the file's name. An embedding's name is "
                                                                  "the word you type in a prompt",
                                               elem_id="lora-name")
                        self.add = gr.Button("Add", variant="primary", elem_id="lora-add")
                self.detected = gr.Markdown(elem_id="lora-detected")
                self.triggers = gr.Textbox(label="Trigger words", buttons=["copy"], interactive=False,
                                           info="From the file's training captions: put them in your prompt",
                                           elem_id="lora-triggers")
        inputs = [c for slot in self.slots for c in slot]
        for name, scale in self.slots:
            name.focus(self.refresh, None, name, api_name=False, queue=False)
            for change in (name.change, scale.release):
                change(self.pick, inputs, self.active, api_name=False, queue=False)
        # One event in the API, for scripts and tests.
        self.apply = gr.Button(visible=False)
        self.apply.click(self.pick, inputs, self.active, api_name="loras_pick", queue=False)
        bar.expand(self.show_embeddings, None, [self.embeddings, self.embedded], api_name=False, queue=False)
        self.embeddings.input(self.pick_embeddings, self.embeddings, self.embedded, api_name="embeddings_pick",
                              queue=False)
        self.file.upload(lambda path: suggest_name(path), self.file, self.name, api_name=False, queue=False)
        # Checking a file against the model reads its weights: on ZeroGPU that is a GPU call like any job's.
        add = self.ctx.gpu.task(self.add_file, lambda *_: IMPORT_SECONDS)
        self.add.click(add, [self.file, self.path, self.name],
                       [self.detected, self.triggers, *(n for n, _ in self.slots), self.embeddings, self.embedded],
                       api_name="lora_import", concurrency_id=GPU)

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

    def show_embeddings(self, request: gr.Request):
        tokens = [token for _, token in self.ctx.session_embeddings(request)]
        mine = embedding_library(self.ctx.embedding_root(request))
        return (gr.update(choices=mine, value=tokens, visible=bool(mine)),
                self.in_use(tokens) if mine else "No embedding in your library yet: add one below.")

    @staticmethod
    def in_use(tokens: list[str]) -> str:
        return ("Type " + " or ".join(f"`{t}`" for t in tokens) + " in a prompt to use "
                + ("it." if len(tokens) == 1 else "them.")) if tokens else "No embedding loaded."

    @user_errors
    def pick_embeddings(self, tokens: list[str] | None, request: gr.Request):
        root, tokens = self.ctx.embedding_root(request), tokens or []
        if missing := set(tokens) - set(embedding_library(root)):
            raise ValueError(f"No embedding named {', '.join(sorted(missing))} in your library.")
        self.ctx.embeddings[session(request)] = [(root / f"{t}.safetensors", t) for t in tokens]
        return self.in_use(tokens)

    def source(self, upload: str | None, typed: str | None, request: gr.Request) -> Path:
        """The uploaded file, else a server file inside the operator's data roots and, on a shared studio, outside
        everybody else's part of the outputs folder."""
        if upload:
            return Path(upload)
        if not (typed or "").strip():
            raise ValueError("Upload a .safetensors file, or name one on this server.")
        storage = self.ctx.storage
        if not storage.data_roots:
            raise ValueError("Files on this server are not available here: upload the file instead.")
        path = storage.data_path(typed.strip())
        if storage.shared and path.is_relative_to(storage.root.resolve()) and \
                not path.is_relative_to(storage.home(self.ctx.owner(request)).resolve()):
            raise ValueError(f"{typed.strip()} is in the studio's outputs, where other people's work is kept: upload "
                             "the file instead.")
        if not path.is_file():
            raise ValueError(f"No file at {typed.strip()}.")
        return path

    @user_errors
    def add_file(self, upload, typed, name, request: gr.Request):
        path = self.source(upload, typed, request)
        # Checked against the model as it was loaded, with nobody's LoRAs or embeddings on it.
        with self.ctx.manager.lend(self.ctx.model) as pipe:
            info, where = import_file(pipe, path, (name or "").strip() or suggest_name(path.name),
                                      loras=self.ctx.lora_root(request), embeddings=self.ctx.embedding_root(request),
                                      allow_pickle=self.ctx.manager.allow_pickle,
                                      model=f"the studio's model ({self.ctx.manager.resolve(self.ctx.model).name})")
        if info.kind == "embedding" and session(request) in self.ctx.embeddings:  # a session that picked: add it
            self.ctx.embeddings[session(request)].append((where, where.stem))
        names = gr.update(choices=self.ctx.lora_names(request))
        return (self.report(info, where), ", ".join(info.triggers), *[names] * SLOTS,
                *self.show_embeddings(request))

    @staticmethod
    def report(info: AdapterInfo, where: Path) -> str:
        if info.kind == "embedding":
            vectors = f"{info.vectors} vector{'s' * (info.vectors != 1)}"
            lines = [f"Added **{where.stem}**: {FORMATS[info.format]} for {info.base}, {vectors}. Type "
                     f"`{where.stem}` in a prompt to use it."]
        else:
            ranks = "/".join(str(r) for r in info.ranks)
            lines = [f"Added **{where.name}**: {FORMATS[info.format]} for {info.base}, rank {ranks}. Pick it in a "
                     "LoRA list above."]
            if not info.triggers:
                lines.append("The file names no trigger words.")
        return "\n\n".join(lines + info.notes)
