"""Progress and cancellation for long work, without any UI import.

Technique functions take `on_step(done, total)` to report progress, `should_stop()` to poll between steps and, where
they denoise, `on_preview(step, total, x0)` for live previews; the UI turns Cancel into a flag that `should_stop`
reads, so the work stops at the next step and frees the GPU.
"""

import hashlib
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

StepFn = Callable[[int, int], None]
StopFn = Callable[[], bool]
# (step, total, the predicted clean latents x0 at that step): a technique reports every step, the caller decides
# which to show (live previews), so a technique never decodes for a preview nobody watches.
PreviewFn = Callable[[int, int, torch.Tensor], None]


class Cancelled(RuntimeError):
    """The user pressed Cancel; the work stopped between two steps."""


class StopFlag:
    """A stop flag kept as a file, so that work running in another process (a ZeroGPU worker, which is forked for
    each GPU call) sees a Cancel pressed in this one. Checking it costs one `stat` per step."""

    def __init__(self, path: Path):
        self.path = path

    def set(self) -> None:
        self.path.touch()

    def is_set(self) -> bool:
        return self.path.exists()


class CancelFlags:
    """One stop flag per browser session, so a Cancel stops only that user's work."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="studio-stop-")  # removed with this object

    def flag(self, session: str) -> StopFlag:
        return StopFlag(Path(self._folder.name) / f"{hashlib.sha1(session.encode()).hexdigest()[:16]}.stop")

    def arm(self, session: str) -> StopFlag:
        """The cleared flag for a new job of `session`."""
        flag = self.flag(session)
        flag.path.unlink(missing_ok=True)
        return flag

    def cancel(self, session: str) -> None:
        self.flag(session).set()



class Busy(RuntimeError):
    """The session already has a job waiting or running."""


class FairQueue:
    """The shared GPU, one job at a time, served fairly: a session has at most one job waiting or running (a second
    one is refused with `Busy`), and waiting sessions are served in the order they asked, so nobody gets a second
    turn before everyone who asked has had a first. While it waits, a job hears its place (`on_wait(ahead)`) and can
    be cancelled."""

    def __init__(self) -> None:
        self._turns = threading.Condition()
        self._waiting: list[str] = []
        self._running: str | None = None

    def snapshot(self) -> tuple[str | None, list[str]]:
        """The session running now (or None) and those waiting, in their order."""
        with self._turns:
            return self._running, list(self._waiting)

    @contextmanager
    def turn(self, session: str, *, on_wait: Callable[[int], None] | None = None,
             should_stop: StopFn | None = None) -> Iterator[None]:
        with self._turns:
            if session == self._running or session in self._waiting:
                raise Busy("You already have a job queued or running: wait for it to finish, or Cancel it.")
            self._waiting.append(session)
            try:
                while self._running is not None or self._waiting[0] != session:
                    if on_wait:
                        on_wait(self._waiting.index(session) + (self._running is not None))
                    self._turns.wait(timeout=0.5)
                    if should_stop and should_stop():
                        raise Cancelled("Cancelled while waiting for the GPU")
            except BaseException:
                self._waiting.remove(session)
                self._turns.notify_all()
                raise
            self._waiting.pop(0)
            self._running = session
        try:
            yield
        finally:
            with self._turns:
                self._running = None
                self._turns.notify_all()


@contextmanager
def interruptible(modules: list[torch.nn.Module], should_stop: StopFn) -> Iterator[None]:
    """Let a Cancel stop work in the middle of a denoising step: before each of `modules` (a UNet's and a VAE's
    blocks) runs, `should_stop` is asked, and `Cancelled` raised. One step of a large image can take longer than a
    user will wait; with this a Cancel lands within one block. The hooks are removed when the job ends."""
    def check(*_: object) -> None:
        if should_stop():
            raise Cancelled("Cancelled")

    handles = [m.register_forward_pre_hook(check) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def blocks(pipe: object) -> list[torch.nn.Module]:
    """The coarse blocks of a pipeline's UNet and VAE decoder, where `interruptible` checks for a Cancel."""
    unet, vae = getattr(pipe, "unet", None), getattr(pipe, "vae", None)
    found = [*unet.down_blocks, unet.mid_block, *unet.up_blocks] if unet is not None else []
    if vae is not None:
        found += [vae.decoder.mid_block, *vae.decoder.up_blocks]
    return [m for m in found if m is not None]
