"""Publishing a run on the Hugging Face Hub (`hub.push=true`): what is uploaded, and whether it can be, checked first.

`check_push` runs at startup: a repo id the Hub accepts, the network allowed (`HF_HUB_OFFLINE` unset), a token that
the Hub accepts with write access; each failure says how to fix it. `push` runs once training has finished (rank 0):
one commit with the final adapter folder (intermediate `step_N/` and `best/` adapters left out), its model card as
the repo's README, and the validation images the card shows (first and last round), at the paths the card links.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, Optional, Union

from simpletuner_pl.config.hub import HubConfig
from simpletuner_pl.errors import ConfigError

log = logging.getLogger(__name__)
NOT_PUSHING = "or hub.push=false to train without uploading"


def check_push(hub: HubConfig) -> None:
    if not hub.push:
        return
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not hub.repo_id:
        raise ConfigError(f"hub.push=true needs hub.repo_id=<user or org>/<name> (created if missing), {NOT_PUSHING}")
    try:
        validate_repo_id(hub.repo_id)
    except HFValidationError as err:
        raise ConfigError(f"hub.repo_id={hub.repo_id!r} is not a Hub repo id: {err}") from None
    if constants.is_offline_mode():
        raise ConfigError("hub.push=true needs the network, but HF_HUB_OFFLINE=1 is set: unset it (`unset "
                          f"HF_HUB_OFFLINE`), {NOT_PUSHING}")
    token = get_token()
    if token is None:
        raise ConfigError("hub.push=true, but you are not logged in to the Hugging Face Hub: run `hf auth login` "
                          f"with a token that can write, or set HF_TOKEN, {NOT_PUSHING}")
    try:
        who = HfApi().whoami(token=token)
    except Exception as err:  # 401, no route to the Hub, a proxy...: the upload would fail the same way
        raise ConfigError(f"hub.push=true, but the Hub did not accept the token ({type(err).__name__}: {err}): check "
                          f"the network, or log in again with `hf auth login`, {NOT_PUSHING}") from None
    role = who.get("auth", {}).get("accessToken", {}).get("role")
    if role == "read":
        raise ConfigError(f"hub.push=true, but the token of {who.get('name')} is read-only: create a write token "
                          f"(https://huggingface.co/settings/tokens) and `hf auth login` with it, {NOT_PUSHING}")


def hub_card(card: str) -> str:
    """The model card as the repo's README: image links relative to the repo root, and no `base_model` that is not
    a Hub id (a local folder, the tiny model), which the Hub would refuse as metadata."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    def keep(match: re.Match) -> str:
        value = match.group(1).strip()
        try:
            validate_repo_id(value)
        except HFValidationError:
            return ""
        return match.group(0) if not Path(value).expanduser().exists() else ""

    card = re.sub(r"^base_model: (.*)\n", keep, card, count=1, flags=re.MULTILINE)
    return card.replace("](../validation/", "](validation/")


def upload_files(output_dir: Path) -> Dict[str, Union[Path, bytes]]:
    """Path in the repo → local file (or content) of everything `push` uploads."""
    adapter = Path(output_dir) / "adapter"
    files: Dict[str, Union[Path, bytes]] = {}
    for path in sorted(adapter.rglob("*")):
        relative = path.relative_to(adapter)
        if path.is_file() and relative.parts[0] != "best" and not relative.parts[0].startswith("step_"):
            files[relative.as_posix()] = path
    card = adapter / "README.md"
    if card.is_file():
        files["README.md"] = hub_card(card.read_text(encoding="utf-8")).encode()
    rounds = sorted((p for p in (Path(output_dir) / "validation").glob("step_*") if p.is_dir()),
                    key=lambda p: int(p.name.split("_")[1]))
    if rounds:
        for image in sorted(rounds[-1].glob("*-*x*.png")):  # the images the card's table links
            for step_dir in dict.fromkeys((rounds[0], rounds[-1])):
                if (step_dir / image.name).is_file():
                    files[f"validation/{step_dir.name}/{image.name}"] = step_dir / image.name
    return files


def push(output_dir: Path, hub: HubConfig, api=None, message: Optional[str] = None) -> str:
    """Create the repo (`hub.private`) if it does not exist and upload `upload_files` in one commit; the repo URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = api or HfApi()
    files = upload_files(output_dir)
    if not any(name.endswith(".safetensors") for name in files):
        raise ConfigError(f"hub.push: no adapter in {Path(output_dir) / 'adapter'} to upload")
    repo = api.create_repo(hub.repo_id, private=hub.private, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=source if isinstance(source, bytes)
                                     else str(source)) for name, source in files.items()]
    api.create_commit(repo_id=hub.repo_id, operations=operations,
                      commit_message=message or f"simpletuner_pl: {Path(output_dir).name}")
    log.info("pushed %d files to %s", len(files), repo)
    return str(repo)
