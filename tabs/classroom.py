"""Classroom tab, for the teacher only (the admins of `--classroom`): the GPU's line, every student's latest pictures
for the projector, stopping anyone's jobs, publishing a student's LoRA to the whole class, and notes for the class.
Students never see this tab, and every handler here checks the login itself (a hidden tab is no protection)."""

import shutil

import gradio as gr

from studio.lora import library
from tabs import StudioContext, user_errors

EXPLAIN = ("**Your class at a glance.** The GPU's line shows who is running and who waits (one job per student, "
           "first come first served). *Latest pictures* puts each student's newest image side by side, to put on "
           "the projector. *Stop* ends every job of a student, training included. *Publish* copies a student's "
           "LoRA into the class library, where everyone can apply it (named shared/…). The notes appear at the top "
           "of every student's page.")


def label(owner: str) -> str:
    """How an owner is shown: a student by their login name, an anonymous visitor by a short session id."""
    kind, _, who = owner.partition(":")
    return who if kind == "user" else f"visitor {who[:6]}"


class ClassroomTab:
    TAB_ID, LABEL = "classroom", "Classroom"

    def __init__(self, ctx: StudioContext):
        self.ctx = ctx
        with gr.Tab(self.LABEL, id=self.TAB_ID, visible=False) as self.tab:
            gr.Markdown(EXPLAIN)
            self.line = gr.Markdown(elem_id="classroom-queue")
            self.latest = gr.Gallery(label="Latest pictures, one per student", columns=6, height=360,
                                     object_fit="contain", elem_id="classroom-latest")
            with gr.Row():
                self.student = gr.Dropdown([], label="Student", allow_custom_value=True)
                self.stop = gr.Button("Stop their jobs", variant="stop")
            with gr.Row():
                self.lora = gr.Dropdown([], label="A student's LoRA", allow_custom_value=True)
                self.publish = gr.Button("Publish to the class library")
            self.notes = gr.Textbox(label="Notes and prompts for the class", lines=3,
                                    info="Shown at the top of every student's page.")
            self.show = gr.Button("Show to the class")
            self.done = gr.Markdown()
            self.timer = gr.Timer(5.0)
        outputs = [self.line, self.latest, self.student, self.lora]
        self.timer.tick(self.overview, None, outputs, api_name="classroom_overview", queue=False)
        self.stop.click(self.stop_student, self.student, self.done, api_name="classroom_stop", queue=False)
        self.publish.click(self.publish_lora, self.lora, self.done, api_name="classroom_publish")
        self.show.click(self.pin_notes, self.notes, self.done, api_name="classroom_notes", queue=False)

    def visibility(self, request: gr.Request):
        """Only an admin's page shows this tab."""
        return gr.Tab(visible=self.ctx.is_admin(request))

    def _admin(self, request: gr.Request) -> None:
        if not self.ctx.is_admin(request):
            raise gr.Error("Only the teacher can do that.", title="Not allowed")

    def owners(self) -> list[str]:
        return sorted({*self.ctx.sessions.values(), *(owner for owner, _ in self.ctx.training)})

    def overview(self, request: gr.Request):
        if not self.ctx.is_admin(request):
            return "", [], gr.update(), gr.update()
        running, waiting = self.ctx.queue.snapshot()
        who = {session: label(owner) for session, owner in self.ctx.sessions.items()}
        lines = [f"**On the GPU:** {who.get(running, running) if running else 'nobody'}",
                 "**Waiting:** " + (", ".join(who.get(s, s) for s in waiting) or "nobody")]
        training = [f"{label(o)} ({name}, step {job.state.step} of {job.state.total})"
                    for (o, name), job in self.ctx.training.items() if job.running]
        lines.append("**Training:** " + (", ".join(training) or "nobody"))
        latest = []
        for owner in self.owners():
            pictures = sorted(self.ctx.storage.home(owner).glob("*.png"), key=lambda p: p.stat().st_mtime)
            if pictures:
                latest.append((self.ctx.served(pictures[-1]), label(owner)))
        loras = [f"{label(owner)}/{name}" for owner in self.owners()
                 for name in library(self.ctx.storage.loras(owner))]
        students = [(label(owner), owner) for owner in self.owners()]
        return "\n\n".join(lines), latest, gr.update(choices=students), gr.update(choices=loras)

    @user_errors
    def stop_student(self, owner: str, request: gr.Request):
        self._admin(request)
        if not owner:
            raise ValueError("Pick a student first.")
        for session, whose in list(self.ctx.sessions.items()):
            if whose == owner:
                self.ctx.cancel.cancel(session)
        for (whose, _), job in self.ctx.training.items():
            if whose == owner:
                job.cancel()
        return f"Stopped the jobs of {label(owner)}."

    @user_errors
    def publish_lora(self, choice: str, request: gr.Request):
        self._admin(request)
        owners = {label(owner): owner for owner in self.owners()}
        who, _, name = (choice or "").rpartition("/")
        if who not in owners or name not in library(self.ctx.storage.loras(owners[who])):
            raise ValueError("Pick one of the students' finished LoRAs.")
        target = self.ctx.storage.library / name
        if target.exists():
            raise ValueError(f"The class library has a LoRA named {name!r} already.")
        shutil.copytree(self.ctx.storage.loras(owners[who]) / name, target,
                        ignore=shutil.ignore_patterns("instance", "checkpoints", "job.json"))  # no one's photos
        return f"Published {name} to the class library as shared/{name}."

    @user_errors
    def pin_notes(self, notes: str, request: gr.Request):
        self._admin(request)
        self.ctx.notes = (notes or "").strip()
        return "The notes are on every page now." if self.ctx.notes else "The notes are cleared."
