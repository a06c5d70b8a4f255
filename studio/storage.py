"""Where what people make is kept, who may see it, and which folders of the server a visitor may name.

On a private desktop there is one owner and the layout is the studio's usual one (`outputs/*.png`,
`outputs/loras/<name>`, `outputs/classify`). On a shared studio (`--public`, `--classroom`) each owner (a logged-in
user, else a browser session) has a home of its own, and LoRAs an admin publishes go to a read-only library:

    outputs/users/<owner digest>/   images, loras/<name>, classify/     only its owner's requests reach it
    outputs/library/loras/<name>                                       published: every user can apply them

Nothing here is served by the web server itself: a handler hands a copy to Gradio, which serves it under an
unguessable name to the session that asked.
"""

import hashlib
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

LOCAL = "local"  # the one owner of a private desktop


def digest(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()[:20]


@dataclass
class Storage:
    root: Path
    shared: bool = False  # many owners: homes under users/, a published library
    data_roots: list[Path] = field(default_factory=list)  # server folders a visitor may name (Classify batches)

    def home(self, owner: str) -> Path:
        return self.root / "users" / digest(owner) if self.shared else self.root

    def loras(self, owner: str) -> Path:
        return self.home(owner) / "loras"

    @property
    def library(self) -> Path:
        return self.root / "library" / "loras"

    def png(self, owner: str, seed: int) -> Path:
        """A new file name for an image: time, seed and a random part, so two requests never write one file."""
        return self.home(owner) / f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}-{secrets.token_hex(3)}.png"

    def forget(self, owner: str) -> None:
        """An anonymous session ended: what it made goes with it (a logged-in user's home stays)."""
        if self.shared:
            shutil.rmtree(self.home(owner), ignore_errors=True)

    def expire(self, older_than_s: float) -> list[Path]:
        """Homes untouched for longer than `older_than_s` (sessions whose tab never said goodbye), removed."""
        now, gone = time.time(), []
        for home in (self.root / "users").glob("*") if self.shared else []:
            newest = max((p.stat().st_mtime for p in home.rglob("*")), default=home.stat().st_mtime)
            if now - newest > older_than_s:
                shutil.rmtree(home, ignore_errors=True)
                gone.append(home)
        return gone

    def data_path(self, typed: str) -> Path:
        """A folder a visitor typed, only if it lies inside one of the operator's data roots (symlinks resolved)."""
        if not self.data_roots:
            raise ValueError("Folders on this server are not available here: upload a zip instead. (Whoever runs "
                             "the studio can allow folders with --data-root.)")
        path = Path(typed).expanduser().resolve()
        for root in self.data_roots:
            if path.is_relative_to(root.expanduser().resolve()):
                return path
        roots = ", ".join(str(r) for r in self.data_roots)
        raise ValueError(f"{typed} is outside the folders this studio may read ({roots}).")
